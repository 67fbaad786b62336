"""RobustBlock: pooled, channel-reducing, orthogonal block (Meleshin et al., §3 and Fig. 2).

``AdaptiveAvgPool2d -> s x s`` (s = min(H, W) by default, the paper's square
input for the orthogonal convolution) ``-> Conv2d(C, C/2)`` (cheaper orthogonal
layer, which is most effective when it expands channels) ``-> orthogonal conv
C/2 -> C`` (semi-orthogonal, norm-preserving). The output ``[B, C, s, s]`` feeds
the convolutional block it was spliced in front of (:class:`RobustSplice`).

The paper's public code builds the block differently (``models_train/Cayley.py``,
``CayleyBlockPool``; SPEC §6): a stride-1 sliding max-pool to a square a little
smaller than min(H, W), a 3x3 reducing conv without padding to about C/5 channels,
then the Cayley conv with its kernel normalised by its spectrum and its scale fixed
at 1, and the whole block left at its random initialisation. :data:`PAPER_CODE_BLOCK`
holds those options (``harden(model, **PAPER_CODE_BLOCK)``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Sequence, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .modes import preserved_modes
from .ortho import get_ortho, ortho_name

__all__ = ["RobustBlock", "RobustBlockConfig", "RobustSplice", "PooledSize", "PAPER_CODE_BLOCK", "symbolic_trace"]

PooledSize = Union[int, str]  # an int, "min" (min(H, W)), "paper" (the paper code's square) or "keep"

# The block as the paper's code builds it (hidden_channels as a fraction: 200 of 1024).
PAPER_CODE_BLOCK: dict[str, Any] = {
    "pooling": "max",
    "pooled_size": "paper",
    "hidden_channels": 200 / 1024,
    "reduce_kernel_size": 3,
    "reduce_padding": False,
    "ortho": "cayley",
    "ortho_options": {"normalize": "spectrum", "scale": 1.0},
    "freeze": True,
}


def hidden_width(hidden_channels: int | float | None, channels: int) -> int:
    """The block's width after its reducing conv: ``channels // 2`` by default, a whole
    number as given, or a fraction in (0, 1] of ``channels`` (the paper code's 200/1024)."""
    if hidden_channels is None:
        return max(1, channels // 2)
    if isinstance(hidden_channels, float):
        if not 0 < hidden_channels <= 1:
            raise ValueError(f"hidden_channels as a fraction must be in (0, 1], got {hidden_channels}")
        return max(1, round(hidden_channels * channels))
    if not 1 <= hidden_channels <= channels:
        raise ValueError(
            f"hidden_channels must be between 1 and in_channels={channels}, got {hidden_channels}: the orthogonal "
            "layer restores the channels and preserves norms only when it does not reduce them"
        )
    return hidden_channels


@dataclass(frozen=True)
class RobustBlockConfig:
    """Everything needed to rebuild a RobustBlock; plain values only, so it saves as JSON.
    The one source of the block's settings and their defaults: :func:`surgery.harden` and
    :class:`RobustBlock` take their defaults from it."""

    channels: int
    hidden_channels: int
    pooled_size: PooledSize = "min"
    ortho: str = "cayley"
    kernel_size: int = 3
    reduce_kernel_size: int = 1
    example_size: tuple[int, int] | None = None  # (H, W) it received on harden's example input
    pooling: str = "avg"
    reduce_padding: bool = True
    ortho_options: dict[str, Any] | None = None
    freeze: bool = False

    def build(self, layers: Sequence[type] = ()) -> "RobustBlock":
        """The block; ``layers`` are unregistered orthogonal layer classes ``ortho`` may name."""
        settings = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "channels"}
        return RobustBlock(self.channels, **{**settings, "ortho": get_ortho(self.ortho, layers)})


class RobustBlock(nn.Module):
    """Pool to a square, reduce channels, restore them with an orthogonal convolution.

    Args:
        in_channels: channels C of the feature map it receives (and returns).
        hidden_channels: channels after the reducing conv; default ``C // 2``.
            Must not exceed C: the orthogonal layer is norm-preserving only when it
            does not reduce channels.
        pooled_size: side s of the square map: ``"min"`` (min(H, W)), ``"paper"``
            (min(H, W) - ceil(0.02 min(H, W)), the paper code's square), ``"keep"``
            (no pooling; the orthogonal layers accept rectangles) or an int.
        ortho: ``"cayley"`` (default), ``"aol"``, ``"aoc"``, or a layer class.
        kernel_size: kernel of the orthogonal convolution.
        reduce_kernel_size: kernel of the channel-reducing convolution.
        example_size: (H, W) of a typical input, recorded for ``describe``.
        pooling: ``"avg"`` (adaptive average pooling, the paper's description) or
            ``"max"`` (a stride-1 sliding max window of (H - s + 1) x (W - s + 1), its code).
        reduce_padding: pad the reducing conv to keep the map size (default); False
            shrinks it by ``reduce_kernel_size - 1``, as the paper's code does.
        ortho_options: keyword arguments of the orthogonal layer (``CayleyConv2d``:
            ``normalize="spectrum"``, ``scale=1.0``).
        freeze: the block's parameters do not train (the paper's code leaves the
            block out of its optimiser, at its random initialisation).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int | None = None,
        pooled_size: PooledSize = RobustBlockConfig.pooled_size,
        ortho: str | type = RobustBlockConfig.ortho,
        kernel_size: int = RobustBlockConfig.kernel_size,
        reduce_kernel_size: int = RobustBlockConfig.reduce_kernel_size,
        bias: bool = True,
        example_size: tuple[int, int] | None = RobustBlockConfig.example_size,
        pooling: str = RobustBlockConfig.pooling,
        reduce_padding: bool = RobustBlockConfig.reduce_padding,
        ortho_options: dict[str, Any] | None = RobustBlockConfig.ortho_options,
        freeze: bool = RobustBlockConfig.freeze,
    ):
        super().__init__()
        hidden_channels = hidden_width(hidden_channels, in_channels)
        if not (pooled_size in ("min", "paper", "keep") or (isinstance(pooled_size, int) and pooled_size >= 1)):
            raise ValueError(f"pooled_size must be 'min', 'paper', 'keep' or a positive int, got {pooled_size!r}")
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
        if reduce_kernel_size < 1 or (reduce_padding and reduce_kernel_size % 2 != 1):
            raise ValueError(
                f"reduce_kernel_size must be odd to keep the map size (or pass reduce_padding=False), got {reduce_kernel_size}"
            )
        ortho_cls = get_ortho(ortho)
        self.config = RobustBlockConfig(
            channels=in_channels,
            hidden_channels=hidden_channels,
            pooled_size=pooled_size,
            ortho=ortho_name(ortho_cls),
            kernel_size=kernel_size,
            reduce_kernel_size=reduce_kernel_size,
            example_size=example_size,
            pooling=pooling,
            reduce_padding=reduce_padding,
            ortho_options=dict(ortho_options) if ortho_options else None,
            freeze=freeze,
        )
        self.reduce = nn.Conv2d(
            in_channels, hidden_channels, reduce_kernel_size,
            padding=reduce_kernel_size // 2 if reduce_padding else 0, bias=bias,
        )
        try:
            self.ortho = ortho_cls(hidden_channels, in_channels, kernel_size, bias=bias, **(ortho_options or {}))
        except TypeError as err:
            raise ValueError(f"{ortho_cls.__name__} does not take ortho_options {ortho_options}: {err}") from err
        if freeze:
            self.requires_grad_(False)

    def pooled_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size after pooling, before the reducing conv."""
        size = self.config.pooled_size
        if size == "keep":
            return height, width
        if size == "min":
            side = min(height, width)
        elif size == "paper":
            side = max(1, min(height, width) - math.ceil(0.02 * min(height, width)))
        else:
            side = size
        return side, side

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the output for an input of ``height x width``."""
        shrink = 0 if self.config.reduce_padding else self.config.reduce_kernel_size - 1
        pooled = self.pooled_size(height, width)
        return pooled[0] - shrink, pooled[1] - shrink

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.channels:
            raise ValueError(
                f"RobustBlock expects a (batch, {self.config.channels}, H, W) feature map, got {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        size = self.pooled_size(height, width)
        if (height, width) != size:
            if self.config.pooling == "avg":
                x = F.adaptive_avg_pool2d(x, size)
            elif size[0] <= height and size[1] <= width:
                x = F.max_pool2d(x, (height - size[0] + 1, width - size[1] + 1), stride=1)
            else:
                raise ValueError(f"max pooling cannot enlarge a {height}x{width} map to {size[0]}x{size[1]}")
        if min(self.output_size(height, width)) < 1:
            raise ValueError(
                f"a {height}x{width} map is too small for a {self.config.reduce_kernel_size}x"
                f"{self.config.reduce_kernel_size} reducing conv without padding"
            )
        return self.ortho(self.reduce(x))

    @torch.no_grad()
    def clear_cache(self) -> None:
        """Drop the orthogonal layer's inference cache, where it keeps one (a layer
        registered by the user need not have ``clear_cache``)."""
        clear = getattr(self.ortho, "clear_cache", None)
        if callable(clear):
            clear()

    def cache_bytes(self) -> int:
        """Bytes the orthogonal layer keeps between inference calls (0 for a layer that does not say)."""
        measure = getattr(self.ortho, "cache_bytes", None)
        return int(measure()) if callable(measure) else 0

    def norm_ratio(self, height: int, width: int | None = None, samples: int = 4) -> torch.Tensor:
        """Measured ``||W x|| / ||x||`` of the orthogonal layer's linear part on random inputs.

        1 for a norm-preserving layer, <= 1 for a 1-Lipschitz one. Runs the layer in
        training mode so nothing is cached.
        """
        width = height if width is None else width
        param = next(self.ortho.parameters())
        x = torch.randn(samples, self.config.hidden_channels, height, width, device=param.device)
        with preserved_modes(self.ortho):
            self.ortho.train()
            linear = self.ortho(x) - self.ortho(torch.zeros_like(x[:1]))
        return linear.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)

    def extra_repr(self) -> str:
        extra = f"pooled_size={self.config.pooled_size!r}"
        if self.config.pooling != "avg":
            extra += f", pooling={self.config.pooling!r}"
        return extra + (", frozen" if self.config.freeze else "")


class RobustSplice(nn.Module):
    """A RobustBlock in front of the module it protects: ``original(robust(x), *rest)``.

    Replaces that module in its parent, so the model keeps its class, its
    forward signature and every other parameter name.
    """

    def __init__(self, robust: RobustBlock, original: nn.Module):
        super().__init__()
        self.robust = robust
        self.original = original

    def forward(self, x: torch.Tensor, *args, **kwargs):
        return self.original(self.robust(x), *args, **kwargs)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, RobustBlock) or super().is_leaf_module(module, qualified_name)


def symbolic_trace(model: nn.Module) -> torch.fx.GraphModule:
    """torch.fx trace of a (hardened) model with each RobustBlock kept as one call.

    A RobustBlock sizes its pooling and its Fourier-domain matrices from the input it
    receives, which plain ``torch.fx.symbolic_trace`` cannot follow symbolically.
    """
    graph = _Tracer().trace(model)
    return torch.fx.GraphModule(model, graph, type(model).__name__)
