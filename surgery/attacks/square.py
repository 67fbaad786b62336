"""Square Attack (Andriushchenko et al., "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020), l_inf, for IQA scores.

Score-based: it reads the model's scores and never its gradients, so no gradient
masking can stop it; a model that resists white-box attacks but not this one is
masking its gradients (SPEC §6b). It starts from vertical stripes of +-eps, then
each query redraws one random square window of the perturbation (a +-eps value per
channel) and keeps the change for the images whose objective it raised. The window
covers a fraction ``p`` of the image, ``p_init`` at first, halved on the paper's
schedule (rescaled to ``queries``). One forward pass per query: ``queries`` in all.
"""
from __future__ import annotations

import math

import torch

from ..checks import check_budget, check_count, check_seed
from .base import Attack, Objective

__all__ = ["Square", "square_fraction"]

# the paper's schedule for 10,000 queries: the window fraction halves after each of these
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, query: int, queries: int) -> float:
    """The fraction of the image the window covers at ``query`` of ``queries``."""
    scaled = int(query / queries * 10000)
    return p_init / 2 ** sum(scaled > h for h in _HALVINGS)


class Square(Attack):
    """Random-search l_inf attack on the score with ``queries`` forward passes per image."""

    def __init__(self, eps: float = 4 / 255, queries: int = 1000, p_init: float = 0.8, seed: int | None = None):
        check_budget("Square", eps=eps)
        check_count("Square", queries=queries)
        if not 0 < p_init <= 1:
            raise ValueError(f"Square needs 0 < p_init <= 1, got p_init={p_init!r}")
        self.eps = float(eps)
        self.queries = int(queries)
        self.p_init = p_init
        self.seed = check_seed("Square", seed)
        self.name = f"square-{queries}"

    def _signs(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.randint(0, 2, shape, device=like.device).to(like.dtype).mul_(2).sub_(1).mul_(self.eps)

    @torch.no_grad()
    def perturb(self, objective: Objective, images: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = images.shape
        best = (images + self._signs((batch, channels, 1, width), images)).clamp(0, 1)
        best_values = objective(best).float()
        rows = torch.arange(height, device=images.device).view(1, 1, height, 1)
        columns = torch.arange(width, device=images.device).view(1, 1, 1, width)
        for query in range(1, self.queries):
            side = math.sqrt(square_fraction(self.p_init, query, self.queries) * height * width)
            side = max(1, min(int(round(side)), height - 1, width - 1))
            top = torch.randint(0, height - side + 1, (batch, 1, 1, 1), device=images.device)
            left = torch.randint(0, width - side + 1, (batch, 1, 1, 1), device=images.device)
            window = (rows >= top) & (rows < top + side) & (columns >= left) & (columns < left + side)
            delta = torch.where(window, self._signs((batch, channels, 1, 1), images), best - images)
            candidate = (images + delta).clamp(0, 1)
            values = objective(candidate).float()
            better = values > best_values
            best[better], best_values[better] = candidate[better], values[better]
        return best
