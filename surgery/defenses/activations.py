"""Smooth activations in place of ReLU (Xie et al. 2021; Sqish: Biswas et al. 2023), a
baseline of Meleshin et al. §5: in every layer, or only in the layers that were not
pre-trained (the paper's "partial replacement", e.g. a new head or RobustBlock).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["Sqish", "replace_activations", "ACTIVATIONS"]


class Sqish(nn.Module):
    """Sqish(x) = a x + (1 - a) x / sqrt(1 + b exp(-2 c (1 - a) x)) (Biswas et al. 2023)."""

    def __init__(self, a: float = 0.01, b: float = 1.0, c: float = 1.0):
        super().__init__()
        self.a, self.b, self.c = a, b, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a
        exponent = (-2 * self.c * (1 - a) * x).clamp(max=60)  # exp overflows beyond; the term is ~0 there
        return a * x + (1 - a) * x * torch.rsqrt(1 + self.b * torch.exp(exponent))


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "sqish": Sqish,
}


def replace_activations(model: nn.Module, kind: str = "silu", modules: Sequence[str] | None = None) -> int:
    """Replace every ``nn.ReLU`` / ``nn.ReLU6`` module by ``kind``, in place.

    ``modules`` limits it to those module paths (and what is inside them), e.g. the
    layers that were not pre-trained. Returns how many were replaced; ReLUs called
    as functions in a forward cannot be replaced and are not counted.
    """
    if kind not in ACTIVATIONS:
        raise ValueError(f"unknown activation {kind!r}: choose one of {sorted(ACTIVATIONS)}")
    names = dict(model.named_modules())
    for prefix in modules or ():
        if prefix not in names:
            raise ValueError(f"{prefix!r} is not a module of {type(model).__name__}")
    targets = [
        name
        for name, module in names.items()
        if isinstance(module, (nn.ReLU, nn.ReLU6))
        and name
        and (modules is None or any(name == p or name.startswith(p + ".") for p in modules))
    ]
    for name in targets:
        model.set_submodule(name, ACTIVATIONS[kind]())
    return len(targets)
