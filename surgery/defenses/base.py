"""Training-time defences the RobustBlock is compared with (Meleshin et al. §5).

A defence changes the loss of a fine-tuning step: it gets the scoring function,
the batch, the targets and the task loss, and returns the loss to minimise.
:func:`surgery.finetune` takes one with ``defense=``.
"""
from __future__ import annotations

import abc
from typing import Callable

import torch

__all__ = ["Defense", "ScoreFn", "LossFn"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Defense(abc.ABC):
    """Base class: ``defense.loss(score, images, targets, task_loss) -> scalar loss``."""

    @abc.abstractmethod
    def loss(self, score: ScoreFn, images: torch.Tensor, targets: torch.Tensor, task_loss: LossFn) -> torch.Tensor:
        """The training loss for one batch with the defence applied."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"
