"""Almost-Orthogonal Lipschitz convolution (Prach & Lampert, ECCV 2022), via orthogonium.

One of the three orthogonal layers compared inside the RobustBlock (Meleshin et
al., "Robustness as Architecture", Table 3). AOL rescales the kernel so the
layer is 1-Lipschitz (``||conv(x)|| <= ||x||``); it is not exactly orthogonal.
"""
from __future__ import annotations

from orthogonium.layers.conv.AOL.aol import AOLConv2D

from .base import WrappedConv2d

__all__ = ["AOLConv2d"]


class AOLConv2d(WrappedConv2d):
    """1-Lipschitz circular convolution with the AOL rescaling."""

    norm_preserving = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, bias)
        self.conv = AOLConv2D(
            in_channels,
            out_channels,
            kernel_size,
            padding=kernel_size // 2,
            padding_mode="circular",
            bias=bias,
        )
