"""FGSM / PGD attacks on IQA scores (Madry et al. 2018), as in Meleshin et al. §4.

The paper's grid: eps in {2, 4, 6, 8, 10}/255 with 1 and 8 iterations and a step
of 1/255. With one iteration a 1/255 step would make every eps the same attack,
so one iteration uses ``alpha = eps`` (FGSM) and more iterations use 1/255;
``alpha`` overrides both. ``norm="l2"`` gives the l2 variant (eps is then an
l2 radius over the whole image).
"""
from __future__ import annotations

from typing import Callable, Literal

import torch

from .base import Attack

__all__ = ["PGD", "default_alpha", "EPS_GRID"]

EPS_GRID = tuple(e / 255 for e in (2, 4, 6, 8, 10))


def default_alpha(eps: float, steps: int) -> float:
    """The step size the paper's protocol implies: eps for one step, else 1/255."""
    return eps if steps == 1 else 1 / 255


class PGD(Attack):
    """Projected gradient ascent on the score within an l_inf (or l2) ball of radius ``eps``."""

    def __init__(
        self,
        eps: float = 4 / 255,
        steps: int = 1,
        alpha: float | None = None,
        norm: Literal["linf", "l2"] = "linf",
        random_start: bool = False,
    ):
        if eps <= 0 or steps < 1:
            raise ValueError(f"PGD needs eps > 0 and steps >= 1, got eps={eps}, steps={steps}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        self.eps = eps
        self.steps = steps
        self.alpha = default_alpha(eps, steps) if alpha is None else alpha
        self.norm = norm
        self.random_start = random_start
        self.name = f"pgd-{steps}"

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return delta.clamp(-self.eps, self.eps)
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return delta * (self.eps / norms).clamp(max=1.0)

    def _step(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return self.alpha * grad.sign()
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return self.alpha * grad / norms

    def perturb(self, score: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, sign: float) -> torch.Tensor:
        delta = torch.zeros_like(images)
        if self.random_start:
            delta = self._project(torch.empty_like(images).uniform_(-self.eps, self.eps))
        delta = (images + delta).clamp(0, 1) - images
        for _ in range(self.steps):
            delta.requires_grad_(True)
            objective = sign * score(images + delta).sum()
            (grad,) = torch.autograd.grad(objective, delta)
            with torch.no_grad():
                delta = self._project(delta + self._step(grad))
                delta = (images + delta).clamp(0, 1) - images
        return images + delta
