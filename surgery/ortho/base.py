"""Common interface of the orthogonal convolutions used inside the RobustBlock.

The RobustBlock of Meleshin et al. ("Robustness as Architecture") restores the
channel count with a norm-preserving convolution. Every variant here is a layer
whose constructor follows ``nn.Conv2d`` (``in_channels, out_channels,
kernel_size, bias``), keeps the spatial size (circular padding, stride 1) and
declares the guarantee it gives, so tests and ``describe`` can measure it.
"""
from __future__ import annotations

from typing import Callable, ClassVar, Hashable

import torch
from torch import nn

__all__ = ["OrthoConv2d", "WrappedConv2d"]


class OrthoConv2d(nn.Module):
    """Base class of the orthogonal convolutions.

    ``norm_preserving`` is True when ``||conv(x) - bias|| == ||x||`` for every input
    once ``out_channels >= in_channels`` (semi-orthogonal); False when the layer
    only guarantees ``<=`` (1-Lipschitz).

    The inference cache (one mechanism for every layer): a layer whose map is built from its
    parameters (Cayley's per-frequency matrices, a parametrized kernel) keeps the built value
    in eval mode when no gradient can reach the tensors it is built from
    (:meth:`_cache_sources`; the bias is applied at every call, so a bias that trains does not
    bypass it), with a snapshot of those tensors' values: a change of value (in place, through
    ``.data``, by an EMA or ``load_state_dict``) rebuilds it, and ``train()``, ``.to()`` or
    :meth:`clear_cache` drop it.
    """

    norm_preserving: ClassVar[bool] = True
    # (what the value was built for, the sources' values then, the value)
    _inference_cache: tuple[Hashable, tuple[torch.Tensor, ...], torch.Tensor] | None = None

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channel counts must be positive, got in={in_channels}, out={out_channels}")
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size

    def _cache_sources(self) -> tuple[torch.Tensor, ...]:
        """The tensors the kept inference value is built from (none: the layer keeps nothing)."""
        return ()

    def clear_cache(self) -> None:
        """Drop whatever the layer keeps between inference calls; the next call rebuilds it."""
        self._inference_cache = None

    def cache_bytes(self) -> int:
        """Bytes the layer keeps between inference calls (what :meth:`clear_cache` frees)."""
        if self._inference_cache is None:
            return 0
        _, snapshot, value = self._inference_cache
        return value.nbytes + sum(t.nbytes for t in snapshot)

    def train(self, mode: bool = True) -> "OrthoConv2d":
        if mode:  # training rebuilds the map at every call and never reads the kept one: free it
            self.clear_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._inference_cache = None  # built on the old device or dtype
        return super()._apply(fn, *args, **kwargs)

    def _use_cache(self) -> bool:
        sources_need_grad = any(t.requires_grad for t in self._cache_sources())
        return not self.training and not (torch.is_grad_enabled() and sources_need_grad)

    def _kept(self, key: Hashable, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The value ``build()`` gives for ``key``, built once while the sources keep their values."""
        kept, sources = self._inference_cache, self._cache_sources()
        # compared by value: version counters miss updates through ``.data`` (EMA, in-place loads)
        if kept is None or kept[0] != key or not all(torch.equal(saved, t) for saved, t in zip(kept[1], sources)):
            self._inference_cache = None  # free the old value before building the new one
            device_type = sources[0].device.type if sources else "cpu"
            # built at full precision whatever autocast the first call ran under: the value outlives it
            with torch.no_grad(), torch.autocast(device_type, enabled=False):
                value = build()
                # the snapshot is taken after the build: building may move the sources' values
                # in place (orthogonium's power-iteration vectors)
                self._inference_cache = (key, tuple(t.detach().clone() for t in sources), value)
        return self._inference_cache[2]

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"


class WrappedConv2d(OrthoConv2d):
    """An orthogonal layer from another library, held as ``self.conv`` (built by the subclass):
    an ``nn.Conv2d`` whose ``weight`` is a torch parametrization, recomputed from the underlying
    parameters at every call (AOC's: Björck iterations on 1024x512 matrices, about 2 s on this
    CPU at 512 -> 1024 channels, longer than the convolution). In eval mode the kernel is
    computed once and kept (the size of a plain convolution's weight: 19 MB at 512 -> 1024,
    3x3): :class:`OrthoConv2d`'s inference cache, built from the parametrization's parameters."""

    conv: nn.Conv2d

    def _cache_sources(self) -> tuple[torch.Tensor, ...]:
        return tuple(p for name, p in self.conv.named_parameters() if name != "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_cache():
            # keyed by device: replicas (nn.DataParallel) share the module's attributes
            kernel = self._kept(str(x.device), lambda: self.conv.weight.detach().clone())
            return self.conv._conv_forward(x, kernel, self.conv.bias)
        return self.conv(x)
