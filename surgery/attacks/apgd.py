"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", ICML 2020) for IQA scores: the strong attack of
SPEC §6b, ``apgd`` in :func:`surgery.evaluate`.

The objective is the score itself (raised or lowered) or its distance from the clean score. From a random
start in the eps ball, steps begin at 2 eps and are halved at checkpoints (after 22%
of the budget, then at shrinking intervals of at least 6%) whenever fewer than 75% of
the steps since the last checkpoint raised the objective, or the step was not halved
last time and the best objective has not moved; the iterate then restarts from the
best point. Each step mixes the new projected point with the previous move (momentum
0.75). Every iterate stays in the eps ball and in [0, 1]; the best one per image is
returned.
"""
from __future__ import annotations

from typing import Literal

import torch

from ..checks import check_budget, check_count, check_seed
from .base import Attack, Objective
from .pgd import BestIterate

__all__ = ["APGD", "apgd_checkpoints"]


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD may halve its step: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), times ``steps``."""
    points = [0.0, 0.22]
    while points[-1] < 1:
        points.append(points[-1] + max(points[-1] - points[-2] - 0.03, 0.06))
    return sorted({int(round(p * steps)) for p in points[1:] if 0 < round(p * steps) < steps})


class APGD(Attack):
    """Auto-PGD on the score in an l_inf (or l2) ball of radius ``eps``; ``restarts`` runs
    from independent random starts, the best adversarial image per image kept."""

    def __init__(
        self,
        eps: float = 4 / 255,
        steps: int = 50,
        norm: Literal["linf", "l2"] = "linf",
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        seed: int | None = None,
    ):
        check_budget("APGD", eps=eps)
        check_count("APGD", steps=steps, restarts=restarts)
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if not (0 < rho < 1 and 0 <= momentum < 1):
            raise ValueError(f"APGD needs 0 < rho < 1 and 0 <= momentum < 1, got rho={rho}, momentum={momentum}")
        self.eps = float(eps)
        self.steps = int(steps)
        self.norm = norm
        self.restarts = int(restarts)
        self.rho = rho
        self.momentum = momentum
        self.seed = check_seed("APGD", seed)
        self.name = "apgd" if steps == 50 else f"apgd-{steps}"

    def _project(self, images: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        delta = candidate - images
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = delta * (self.eps / norms).clamp(max=1.0)
        return (images + delta).clamp(0, 1)

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return grad.sign()
        return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)

    def _start(self, images: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            noise = torch.empty_like(images).uniform_(-1, 1)
            noise = noise / noise.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        else:
            noise = torch.randn_like(images)
            noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (images + self.eps * noise).clamp(0, 1)

    def _restart(self, objective: Objective, images: torch.Tensor, best: BestIterate) -> None:
        def value_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = x.detach().requires_grad_(True)
            values = objective(x)
            (grad,) = torch.autograd.grad(values.sum(), x)
            return values.detach().float(), grad.detach()

        batch = images.shape[0]
        view = (-1, 1, 1, 1)
        x = self._start(images)
        values, grad = value_and_grad(x)
        best.update(x, values)
        run_best_x, run_best_value, run_best_grad = x.clone(), values.clone(), grad.clone()
        step = torch.full((batch,), 2.0 * self.eps, device=images.device)
        previous = x.clone()
        checkpoints = set(apgd_checkpoints(self.steps))
        last_checkpoint = 0
        increases = torch.zeros(batch, device=images.device)
        value_at_checkpoint = run_best_value.clone()
        halved_last_time = torch.ones(batch, dtype=torch.bool, device=images.device)
        for i in range(self.steps):
            with torch.no_grad():
                z = self._project(images, x + step.view(view) * self._direction(grad))
                mix = 1.0 if i == 0 else self.momentum
                new = self._project(images, x + mix * (z - x) + (1 - mix) * (x - previous))
                previous = x
            x = new
            new_values, grad = value_and_grad(x)
            best.update(x, new_values)
            increases += (new_values > values).float()
            values = new_values
            improved = values > run_best_value
            run_best_x[improved], run_best_value[improved], run_best_grad[improved] = x[improved], values[improved], grad[improved]
            if i + 1 in checkpoints:
                interval = i + 1 - last_checkpoint
                oscillating = increases < self.rho * interval
                stalled = ~halved_last_time & (run_best_value <= value_at_checkpoint)
                halve = oscillating | stalled
                step[halve] /= 2
                x = torch.where(halve.view(view), run_best_x, x)
                grad = torch.where(halve.view(view), run_best_grad, grad)
                halved_last_time = halve
                value_at_checkpoint = run_best_value.clone()
                increases.zero_()
                last_checkpoint = i + 1

    def perturb(self, objective: Objective, images: torch.Tensor) -> torch.Tensor:
        best = BestIterate(images)
        for _ in range(self.restarts):
            self._restart(objective, images, best)
        return best.images
