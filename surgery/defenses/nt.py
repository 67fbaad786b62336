"""NT: gradient-norm regularisation by finite differences (Liu et al., "Defense against
adversarial attacks on no-reference image quality models with gradient norm
regularization", CVPR 2024), a baseline of Meleshin et al. §5.

With ``g = grad_x f(x)`` and ``v = sign(g)`` (detached), the directional derivative
``dl = (f(x + h v) - f(x)) / h`` approximates ``||g||_1``; ``w * mean(dl^2) / 2`` is
added to the task loss (w = 1e-3, h = 1e-2 as in the paper).
"""
from __future__ import annotations

import torch

from .base import Defense, LossFn, ScoreFn

__all__ = ["NormRegularization"]


class NormRegularization(Defense):
    def __init__(self, weight: float = 1e-3, h: float = 1e-2):
        self.weight = weight
        self.h = h

    def loss(self, score: ScoreFn, images: torch.Tensor, targets: torch.Tensor, task_loss: LossFn) -> torch.Tensor:
        x = images.detach().clone().requires_grad_(True)
        clean = score(x)
        (grad,) = torch.autograd.grad(clean.sum(), x, retain_graph=True)
        direction = grad.sign().detach()
        shifted = score((images + self.h * direction).clamp(0, 1))
        slope = (shifted - clean) / self.h
        return task_loss(clean, targets) + self.weight * slope.square().mean() / 2
