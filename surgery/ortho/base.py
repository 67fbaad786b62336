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

    def cache_bytes(self) -> int:
        """Bytes the layer keeps between inference calls (what :meth:`clear_cache` frees)."""
        return 0

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"


class WrappedConv2d(OrthoConv2d):
    """An orthogonal layer from another library, held as ``self.conv`` (built by the subclass):
    an ``nn.Conv2d`` whose ``weight`` is a torch parametrization, recomputed from the underlying
    parameters at every call (AOC's: Björck iterations on 1024x512 matrices, about 2 s on this
    CPU at 512 -> 1024 channels, longer than the convolution). In eval mode, when no gradient
    can reach the layer's parameters, the kernel is computed once and kept (the size of a
    plain convolution's weight: 19 MB at 512 -> 1024, 3x3) until a parameter's value changes
    (compared by value: updates through ``.data`` count), ``train()`` or :meth:`clear_cache`."""

    conv: nn.Conv2d
    _kernel_cache: tuple[tuple[torch.Tensor, ...], torch.Tensor] | None = None

    def clear_cache(self) -> None:
        """Drop the kept inference kernel (rebuilt on the next eval call)."""
        self._kernel_cache = None

    def cache_bytes(self) -> int:
        if self._kernel_cache is None:
            return 0
        saved, kernel = self._kernel_cache
        return kernel.nbytes + sum(t.nbytes for t in saved)

    def train(self, mode: bool = True) -> "WrappedConv2d":
        if mode:  # training recomputes the kernel at every call and never reads the kept one
            self.clear_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._kernel_cache = None
        return super()._apply(fn, *args, **kwargs)

    def _use_cache(self) -> bool:
        weights_need_grad = any(p.requires_grad for p in self.conv.parameters())
        return not self.training and not (torch.is_grad_enabled() and weights_need_grad)

    def _kernel(self) -> torch.Tensor:
        sources = tuple(p for name, p in self.conv.named_parameters() if name != "bias")
        kept = self._kernel_cache
        if kept is None or not all(torch.equal(saved, p) for saved, p in zip(kept[0], sources)):
            self._kernel_cache = None  # free the old kernel before building the new one
            with torch.no_grad():
                kernel = self.conv.weight.detach().clone()
                # saved after the kernel: computing it advances orthogonium's power-iteration vectors
                self._kernel_cache = (tuple(p.detach().clone() for p in sources), kernel)
        return self._kernel_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_cache():
            return self.conv._conv_forward(x, self._kernel(), self.conv.bias)
        return self.conv(x)
