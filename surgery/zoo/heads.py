"""Building blocks shared by the zoo: input normalisation, MLP quality heads, and the
generic "timm backbone + quality head" model.

Every zoo model takes images in [0, 1] (what attacks perturb, SPEC §1) and
normalises them itself, so attacks and budgets never see normalised pixels.
"""
from __future__ import annotations

from typing import Sequence

import timm
import torch
from torch import nn

__all__ = ["Normalize", "MLPHead", "TimmIQA", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(x - mean) / std per channel, for images in [0, 1]."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLPHead(nn.Sequential):
    """Linear layers with ReLU and dropout between them, ending in one score."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (256,), dropout: Sequence[float] | float = 0.0):
        dims = [in_features, *hidden]
        drops = [dropout] * len(hidden) if isinstance(dropout, (int, float)) else list(dropout)
        if len(drops) != len(hidden):
            raise ValueError(f"one dropout rate per hidden layer: {len(hidden)} layers, {len(drops)} rates")
        layers: list[nn.Module] = []
        for d_in, d_out, p in zip(dims[:-1], dims[1:], drops):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(inplace=True)]
            if p:
                layers.append(nn.Dropout(p))
        layers.append(nn.Linear(dims[-1], 1))
        super().__init__(*layers)


class TimmIQA(nn.Module):
    """Any timm backbone, globally pooled, with an MLP quality head: ``(B, 3, H, W) in [0, 1] -> (B,)``.

    Args:
        backbone: a timm model name (``"resnet50"``, ``"efficientnet_lite0"``, ...).
        pretrained: passed to timm; offline use needs ``False`` or timm's local cache.
        hidden: widths of the head's hidden layers.
        dropout: dropout after each hidden layer.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained: bool = False,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.0,
    ):
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=pretrained, num_classes=0)
        cfg = self.backbone.pretrained_cfg or {}
        self.normalize = Normalize(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
        self.head = MLPHead(self.backbone.num_features, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(x))).squeeze(-1)
