"""AT: adversarial training for IQA (Chistyakova et al., "Increasing the robustness of
image quality assessment models through adversarial training", 2024), a baseline
of Meleshin et al. §5.

Each batch gains one-step FGSM copies (eps = 4/255, pushing the score up) whose
labels are lowered by ``penalty * (1 - SSIM(x, x_adv)) * (max - min)`` of the
label range, so the model learns that attacked images are not better.
"""
from __future__ import annotations

import piq
import torch

from ..attacks.pgd import PGD
from .base import Defense, LossFn, ScoreFn

__all__ = ["AdversarialTraining"]


class AdversarialTraining(Defense):
    """``label_range``: (min, max) of the training labels; measured on each batch when None."""

    def __init__(self, eps: float = 4 / 255, penalty: float = 1.0, label_range: tuple[float, float] | None = None):
        self.eps = eps
        self.penalty = penalty
        self.label_range = label_range

    def attack_budget(self) -> float:
        return self.eps

    def adversarial(self, score: ScoreFn, images: torch.Tensor) -> torch.Tensor:
        """One FGSM step raising the score, with the model in its training mode."""
        return PGD(eps=self.eps, steps=1).run(score, images.detach(), direction="up")

    def adversarial_labels(self, images: torch.Tensor, adversarial: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        low, high = self.label_range if self.label_range is not None else (targets.min().item(), targets.max().item())
        side = min(images.shape[-2:])
        kernel = min(11, side if side % 2 else side - 1)  # SSIM's 11x11 window, smaller for tiny images
        similarity = piq.ssim(adversarial, images.detach(), data_range=1.0, reduction="none", kernel_size=kernel)
        return targets - self.penalty * (1 - similarity) * (high - low)

    def loss(self, score: ScoreFn, images: torch.Tensor, targets: torch.Tensor, task_loss: LossFn) -> torch.Tensor:
        adversarial = self.adversarial(score, images)
        labels = self.adversarial_labels(images, adversarial, targets)
        both = torch.cat([images, adversarial])
        return task_loss(score(both), torch.cat([targets, labels]))
