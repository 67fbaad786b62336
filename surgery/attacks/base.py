"""Common interface of the adversarial attacks used to measure IQA robustness.

The threat model of Meleshin et al. (§1, §4): an attacker perturbs an image in
[0, 1] within a budget to move an NR-IQA model's score, usually up. Every attack
takes ``(model, images)`` and returns adversarial images that stay in [0, 1] and
inside the budget. Attacks work on any module that maps images to scores (pyiqa
metrics included), run it in eval mode with frozen weights and give it back as it
came (every module's mode, ``requires_grad``, parameters, buffers and ``.grad``).
"""
from __future__ import annotations

import abc
import math
from typing import Callable, Literal

import torch
from torch import nn

from ..modes import measuring
from ..scoring import as_model_input, check_images, score_fn

__all__ = ["Attack", "check_budget", "check_count", "Direction"]

Direction = Literal["up", "down"]


def check_budget(attack: str, **values: float) -> float:
    """Each value a finite number > 0 (a budget, a step); returns the last one."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{attack} needs a finite {name} > 0, got {name}={value!r}")
    return float(value)


def check_count(attack: str, **values: int) -> None:
    """Each value an int >= 1 (steps, iterations, restarts)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{attack} needs an integer {name} >= 1, got {name}={value!r}")


class Attack(abc.ABC):
    """Base class: ``attack(model, images, direction="up") -> adversarial images``.

    Subclasses implement :meth:`perturb` on one batch that is already on the
    model's device and checked; the base class handles checking, eval mode and
    frozen weights (both restored afterwards), batching and device moves.
    """

    name: str = "attack"

    def __call__(
        self, model: nn.Module, images: torch.Tensor, direction: Direction = "up", batch_size: int | None = None
    ) -> torch.Tensor:
        check_images(images)
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        sign = 1.0 if direction == "up" else -1.0
        batch_size = batch_size or images.shape[0]
        out = []
        with measuring(model):
            for start in range(0, images.shape[0], batch_size):
                batch = as_model_input(images[start : start + batch_size], model)
                adversarial = self.perturb(score_fn(model), batch, sign).detach().clamp_(0, 1)
                out.append(adversarial.to(images.device, images.dtype))
        return torch.cat(out)

    @abc.abstractmethod
    def perturb(self, score: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, sign: float) -> torch.Tensor:
        """Adversarial version of ``images`` that moves ``sign * score`` up."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
