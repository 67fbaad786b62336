"""Linearity IQA (Li et al., "Norm-in-Norm Loss with Faster Convergence and Better
Performance for Image Quality Assessment", ACM MM 2020).

The model of the paper's main experiments (Meleshin et al., Tables 1-3): a ResNet
(ResNet-50 by default, ResNeXt-101 32x8d as in the original code) whose last two
stages each feed a pooled, MLP-reduced branch; the two 64-d branch features are
concatenated and regressed. ``forward`` returns the final score; ``forward_branches``
returns the two branch predictions and the final one, the three outputs the
Norm-in-Norm loss is applied to. Input: images in [0, 1], 498x664 in the paper.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from .heads import Normalize

__all__ = ["Linearity"]

_ARCHS = {"resnet50": (1024, 2048), "resnet101": (1024, 2048), "resnext101_32x8d": (1024, 2048), "resnet18": (256, 512)}


def _reducer(in_features: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, 1024),
        nn.BatchNorm1d(1024),
        nn.Linear(1024, 256),
        nn.BatchNorm1d(256),
        nn.Linear(256, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
    )


class Linearity(nn.Module):
    """Linearity IQA model; random weights unless a checkpoint is loaded."""

    def __init__(self, arch: str = "resnet50"):
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"Linearity supports arch in {sorted(_ARCHS)}, got {arch!r}")
        resnet = getattr(torchvision.models, arch)(weights=None)
        self.normalize = Normalize()
        # conv1, bn1, relu, maxpool, layer1..layer4, as in the original code
        self.features = nn.Sequential(*list(resnet.children())[:-2])
        in3, in4 = _ARCHS[arch]
        self.dr6, self.dr7 = _reducer(in3), _reducer(in4)
        self.regr6, self.regr7 = nn.Linear(64, 1), nn.Linear(64, 1)
        self.regression = nn.Linear(128, 1)

    def forward_branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(layer3-branch score, layer4-branch score, final score), each (B,)."""
        x = self.normalize(x)
        pooled = []
        for index, stage in enumerate(self.features):
            x = stage(x)
            if index >= 6:  # after layer3 and layer4
                pooled.append(x.mean(dim=(2, 3)))
        f6, f7 = self.dr6(pooled[0]), self.dr7(pooled[1])
        return (
            self.regr6(f6).squeeze(-1),
            self.regr7(f7).squeeze(-1),
            self.regression(torch.cat([f6, f7], dim=1)).squeeze(-1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_branches(x)[-1]
