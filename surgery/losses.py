"""Training losses for IQA regression: Norm-in-Norm (Li et al., ACM MM 2020, the loss
Linearity is trained with in Meleshin et al.), 1 - PLCC, and MSE.

Norm-in-Norm centres predictions and labels, divides each by its l_q norm and
takes ``(||y_hat - y||_p / scale)^p`` with ``scale = 2^max(1, 1/q) * N^max(0, 1/p - 1/q)``
(p = 1, q = 2 by default); an optional second term compares ``rho * y_hat`` with y,
rho being their correlation.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["norm_in_norm", "plcc_loss", "mse", "get_loss", "LOSSES"]

_EPS = 1e-8


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1).float()


def norm_in_norm(prediction: torch.Tensor, target: torch.Tensor, p: float = 1.0, q: float = 2.0, rho_weight: float = 0.0) -> torch.Tensor:
    """Norm-in-Norm loss over a batch (needs at least two images)."""
    y_hat, y = _flat(prediction), _flat(target)
    n = y_hat.numel()
    if n < 2:
        raise ValueError("Norm-in-Norm needs a batch of at least two images")
    y_hat = y_hat - y_hat.mean()
    y_hat = y_hat / (torch.linalg.vector_norm(y_hat, ord=q) + _EPS)
    y = y - y.mean()
    y = y / (torch.linalg.vector_norm(y, ord=q) + _EPS)
    scale = 2 ** max(1.0, 1.0 / q) * n ** max(0.0, 1.0 / p - 1.0 / q)
    loss = (torch.linalg.vector_norm(y_hat - y, ord=p) / scale) ** p
    if rho_weight:
        rho = F.cosine_similarity(y_hat, y, dim=0)
        rho_loss = (torch.linalg.vector_norm(rho * y_hat - y, ord=p) / scale) ** p
        loss = (loss + rho_weight * rho_loss) / (1 + rho_weight)
    return loss


def plcc_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Pearson correlation of the batch."""
    y_hat, y = _flat(prediction), _flat(target)
    y_hat, y = y_hat - y_hat.mean(), y - y.mean()
    return 1 - (y_hat * y).sum() / (y_hat.norm() * y.norm() + _EPS)


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(_flat(prediction), _flat(target))


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "norm-in-norm": norm_in_norm,
    "plcc": plcc_loss,
    "mse": mse,
}


def get_loss(spec: str | Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if callable(spec):
        return spec
    if spec not in LOSSES:
        raise ValueError(f"unknown loss {spec!r}: choose one of {sorted(LOSSES)} or pass a callable")
    return LOSSES[spec]
