"""Adaptive Orthogonal Convolution (Boissin et al., 2025), via orthogonium.

One of the three orthogonal layers compared inside the RobustBlock (Meleshin et
al., "Robustness as Architecture", Table 3). With circular padding and
``out_channels >= in_channels`` the layer is orthogonal (norm-preserving) to
orthogonium's own tolerance (~1e-4).
"""
from __future__ import annotations

from orthogonium.layers.conv.AOC.ortho_conv import AdaptiveOrthoConv2d

from .base import WrappedConv2d

__all__ = ["AOCConv2d"]


class AOCConv2d(WrappedConv2d):
    """Orthogonal circular convolution from orthogonium's adaptive scheme."""

    norm_preserving = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, bias)
        self.conv = AdaptiveOrthoConv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding="same",
            padding_mode="circular",
            bias=bias,
        )
