"""FGSM / PGD attacks on IQA scores (Madry et al. 2018), as in Meleshin et al. §4, and the
strong PGD a robustness claim needs (SPEC §6b).

The paper's grid: eps in {2, 4, 6, 8, 10}/255 with 1 and 8 iterations and a step
of 1/255. With one iteration a 1/255 step would make every eps the same attack,
so one iteration uses ``alpha = eps`` (FGSM) and more iterations use 1/255;
``alpha`` overrides both. That protocol starts at the clean image and returns the
last iterate; with 8 steps of 1/255 it cannot even reach eps = 10/255.

``random_start=True`` is the attack allowed to win (``pgd-K-rs`` in
:func:`surgery.evaluate`): a uniform start in the eps ball, steps of 2.5 eps / K
(Madry et al.), projection after every step, ``restarts`` independent runs, and
the best iterate of every run kept per image (``best_iterate=False``: the last, one
forward pass fewer, as consistency training uses it). ``norm="l2"`` gives the l2
variant (eps is then an l2 radius over the whole image).
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from ..checks import check_budget, check_count, check_seed
from .base import Attack, Objective

__all__ = ["PGD", "default_alpha", "EPS_GRID", "MSU_EPS_GRID", "BestIterate"]

EPS_GRID = tuple(e / 255 for e in (2, 4, 6, 8, 10))
MSU_EPS_GRID = tuple(e / 255 for e in (2, 4, 8, 16))  # the l_inf presets of the MSU defence benchmark


def default_alpha(eps: float, steps: int, random_start: bool = False) -> float:
    """Step size: with a random start 2.5 eps / steps (Madry et al.); otherwise the
    paper's protocol, eps for one step and 1/255 for more."""
    if random_start:
        return 2.5 * eps / steps
    return eps if steps == 1 else 1 / 255


class BestIterate:
    """Per-image best adversarial images over iterates and restarts (highest objective)."""

    def __init__(self, images: torch.Tensor):
        self.images = images.detach().clone()
        self.values = torch.full((images.shape[0],), -math.inf, device=images.device)

    @torch.no_grad()
    def update(self, candidates: torch.Tensor, values: torch.Tensor) -> None:
        better = values.detach().float() > self.values
        self.images[better] = candidates.detach()[better]
        self.values[better] = values.detach().float()[better]


class PGD(Attack):
    """Projected gradient ascent on the score within an l_inf (or l2) ball of radius ``eps``."""

    def __init__(
        self,
        eps: float = 4 / 255,
        steps: int = 1,
        alpha: float | None = None,
        norm: Literal["linf", "l2"] = "linf",
        random_start: bool = False,
        restarts: int = 1,
        best_iterate: bool | None = None,
        seed: int | None = None,
    ):
        check_budget("PGD", eps=eps)
        check_count("PGD", steps=steps, restarts=restarts)
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if restarts > 1 and not random_start:
            raise ValueError("restarts > 1 repeats the same deterministic run without random_start=True")
        self.eps = float(eps)
        self.steps = int(steps)
        self.alpha = default_alpha(eps, steps, random_start) if alpha is None else check_budget("PGD", alpha=alpha)
        self.norm = norm
        self.random_start = random_start
        self.restarts = int(restarts)
        self.best_iterate = random_start if best_iterate is None else bool(best_iterate)
        if restarts > 1 and not self.best_iterate:
            raise ValueError("restarts > 1 needs best_iterate=True: only the best of the runs is kept")
        self.seed = check_seed("PGD", seed)
        self.name = f"pgd-{steps}-rs" if random_start else f"pgd-{steps}"

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

    def _start(self, images: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return torch.zeros_like(images)
        if self.norm == "linf":
            delta = torch.empty_like(images).uniform_(-self.eps, self.eps)
        else:  # uniform direction, radius uniform in [0, eps]
            delta = torch.randn_like(images)
            radius = self.eps * torch.rand(images.shape[0], 1, 1, 1, device=images.device)
            delta = delta * radius / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (images + delta).clamp(0, 1) - images

    def perturb(self, objective: Objective, images: torch.Tensor) -> torch.Tensor:
        best = BestIterate(images) if self.best_iterate else None
        for _ in range(self.restarts):
            delta = self._start(images)
            for _ in range(self.steps):
                delta.requires_grad_(True)
                values = objective(images + delta)
                (grad,) = torch.autograd.grad(values.sum(), delta)
                with torch.no_grad():
                    if best is not None:
                        best.update(images + delta, values)
                    delta = self._project(delta + self._step(grad))
                    delta = (images + delta).clamp(0, 1) - images
            if best is None:
                return images + delta
            with torch.no_grad():
                best.update(images + delta, objective(images + delta))
        return best.images
