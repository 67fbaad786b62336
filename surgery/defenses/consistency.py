"""Consistency training: TRADES (Zhang et al., "Theoretically principled trade-off between
robustness and accuracy", ICML 2019) for a regression score.

Each batch keeps its clean labels: the loss is the task loss on the clean images plus
``beta * mean(((f(x_adv) - f(x)) / scale)^2)``, where ``x_adv`` maximises that squared gap inside
an l_inf ball of radius ``eps`` (a uniform random start and ``steps`` projected sign
steps of ``2.5 eps / steps``, found with the model as at inference). Unlike AT
(:class:`AdversarialTraining`) no label is invented for the attacked image: the model
is asked to score it as it scores the clean one, in whichever direction the attack
moved it. ``scale`` puts the gap in units of the scores' spread (the standard deviation of
the training labels is a good choice, and what :func:`surgery.robustify` passes), so one
``beta`` means the same for a model scoring in [0, 1] and one scoring in [0, 100].

:class:`OwnSpreadConsistencyTraining` measures the gap in the spread of the batch's own clean
scores instead (differentiated): consistency training in label units can lower its penalty by
squashing every score toward the mean, which shrinks score changes without making the model
any harder to fool; in the model's own units it cannot.

``fraction`` < 1 attacks only that share of each batch (its first images; batches are
shuffled) and averages the penalty over them: the penalty keeps its expected value while
the inner attack and the attacked forward and backward, most of the cost, shrink with it
(benchmarks/robust_training.py times it).
"""
from __future__ import annotations

import math

import torch

from ..checks import check_budget, check_count, check_non_negative
from ..attacks.pgd import PGD
from .base import Defense, LossFn, ScoreFn, as_at_inference

__all__ = ["ConsistencyTraining", "OwnSpreadConsistencyTraining"]


class ConsistencyTraining(Defense):
    def __init__(
        self, eps: float = 4 / 255, steps: int = 3, beta: float = 1.0, alpha: float | None = None, scale: float = 1.0,
        fraction: float = 1.0,
    ):
        self.eps = check_budget("ConsistencyTraining", eps=eps)
        self.scale = check_budget("ConsistencyTraining", scale=scale)
        check_count("ConsistencyTraining", steps=steps)
        self.steps = int(steps)
        self.beta = check_non_negative("ConsistencyTraining", beta=beta)
        self.alpha = check_budget("ConsistencyTraining", alpha=alpha) if alpha is not None else 2.5 * eps / steps
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"ConsistencyTraining: fraction must be in (0, 1], got {fraction!r}")
        self.fraction = float(fraction)

    def attack_budget(self) -> float:
        return self.eps

    def attack(self) -> PGD:
        """The inner attack: random-start PGD moving the score away from the clean one, last iterate."""
        return PGD(eps=self.eps, steps=self.steps, alpha=self.alpha, random_start=True, best_iterate=False)

    def adversarial(self, score: ScoreFn, images: torch.Tensor) -> torch.Tensor:
        """The image in the eps ball whose score is farthest from the clean image's."""
        with as_at_inference(score):
            return self.attack().run(score, images.detach(), direction="away")

    def loss(self, score: ScoreFn, images: torch.Tensor, targets: torch.Tensor, task_loss: LossFn) -> torch.Tensor:
        attacked_count = max(1, math.ceil(self.fraction * images.shape[0] - 1e-9))
        adversarial = self.adversarial(score, images[:attacked_count])
        values = score(torch.cat([images, adversarial]))
        clean, attacked = values[: images.shape[0]], values[images.shape[0] :]
        gap = (attacked - clean[:attacked_count]) / self.gap_unit(clean)
        return task_loss(clean, targets) + self.beta * gap.square().mean()

    def gap_unit(self, clean: torch.Tensor) -> torch.Tensor | float:
        """What a score gap is measured in: ``scale``, the training labels' spread."""
        return self.scale


class OwnSpreadConsistencyTraining(ConsistencyTraining):
    """Consistency training with the gap in units of the standard deviation of the batch's own
    clean scores (``scale`` where a batch has one image), differentiated: squashing the scores
    cannot lower the penalty."""

    def gap_unit(self, clean: torch.Tensor) -> torch.Tensor | float:
        return clean.std().clamp_min(1e-8) if clean.numel() > 1 else self.scale
