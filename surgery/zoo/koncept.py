"""KonCept512 (Hosu et al., "KonIQ-10k: An Ecologically Valid Database for Deep
Learning of Blind Image Quality Assessment", IEEE TIP 2020).

InceptionResNetV2 (timm), global average pooling, and the MLP head
1536 -> 2048 -> 1024 -> 256 -> 1 with dropout 0.25 / 0.25 / 0.5 (the original
Keras model). Used with PLS pruning in Meleshin et al. Input: images in [0, 1],
384x512 in the original.
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from .heads import MLPHead, Normalize

__all__ = ["KonCept512"]


class KonCept512(nn.Module):
    """KonCept512 model; random weights unless a checkpoint is loaded."""

    def __init__(self):
        super().__init__()
        self.backbone = timm.create_model("inception_resnet_v2", pretrained=False, num_classes=0)
        self.normalize = Normalize(self.backbone.pretrained_cfg["mean"], self.backbone.pretrained_cfg["std"])
        self.head = MLPHead(self.backbone.num_features, (2048, 1024, 256), (0.25, 0.25, 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(x))).squeeze(-1)
