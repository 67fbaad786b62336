"""The paper's PGD as its public code runs it: a **non-standard attack**, kept to recompute
the paper's tables and to show where their headline comes from (SPEC §6).

``attacks/iterative.py`` (``attack_callback``, mode "PGD", called with ``delta=eps``) of
the paper's repository starts from uniform noise in [0, 1) clamped to +-10/255 whatever
eps is (so about +10/255 on almost every pixel: a brightening), takes ``steps`` sign
steps of size eps on the score, clamping the perturbation to +-10/255 *before* each
step, evaluates the model on images that may leave [0, 1], and never projects after
the last step. So "PGD-1 at eps" is a +10/255 shift plus one FGSM step of eps, and the
result can be up to 10/255 + eps away from the image (clamped to [0, 1] at the end):
**it exceeds the eps budget**. Use :class:`~surgery.attacks.PGD` with
``random_start=True`` or :class:`~surgery.attacks.APGD` to measure robustness.
"""
from __future__ import annotations


import torch

from ..checks import check_budget, check_count, check_seed
from .base import Attack, Objective

__all__ = ["PaperPGD"]


class PaperPGD(Attack):
    """``paper-pgd-K`` in :func:`surgery.evaluate`: the paper code's attack, budget exceeded on purpose."""

    def __init__(self, eps: float = 4 / 255, steps: int = 1, start_bound: float = 10 / 255, seed: int | None = None):
        check_budget("PaperPGD", eps=eps, start_bound=start_bound)
        check_count("PaperPGD", steps=steps)
        self.eps = float(eps)
        self.steps = int(steps)
        self.start_bound = float(start_bound)
        self.seed = check_seed("PaperPGD", seed)
        self.name = f"paper-pgd-{steps}"

    def perturb(self, objective: Objective, images: torch.Tensor) -> torch.Tensor:
        delta = torch.rand_like(images)
        for _ in range(self.steps):
            delta = delta.clamp(-self.start_bound, self.start_bound).requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(images + delta).sum(), delta)
            delta = (delta + self.eps * grad.sign()).detach()
        return (images + delta).clamp(0, 1)
