"""Common interface of the orthogonal convolutions used inside the RobustBlock.

The RobustBlock of Meleshin et al. ("Robustness as Architecture") restores the
channel count with a norm-preserving convolution. Every variant here is a layer
whose constructor follows ``nn.Conv2d`` (``in_channels, out_channels,
kernel_size, bias``), keeps the spatial size (circular padding, stride 1) and
declares the guarantee it gives, so tests and ``describe`` can measure it.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

__all__ = ["OrthoConv2d", "WrappedConv2d"]


class OrthoConv2d(nn.Module):
    """Base class of the orthogonal convolutions.

    ``norm_preserving`` is True when ``||conv(x) - bias|| == ||x||`` for every input
    once ``out_channels >= in_channels`` (semi-orthogonal); False when the layer
    only guarantees ``<=`` (1-Lipschitz).
    """

    norm_preserving: ClassVar[bool] = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channel counts must be positive, got in={in_channels}, out={out_channels}")
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size

    def clear_cache(self) -> None:
        """Drop whatever the layer keeps between inference calls (nothing here; Cayley's
        orthogonal matrices). The next call rebuilds it."""

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"


class WrappedConv2d(OrthoConv2d):
    """An orthogonal layer from another library, held as ``self.conv`` (built by the subclass)."""

    conv: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
