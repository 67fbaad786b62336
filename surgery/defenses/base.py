"""Training-time defences the RobustBlock is compared with (Meleshin et al. §5).

A defence changes the loss of a fine-tuning step: it gets the scoring function,
the batch, the targets and the task loss, and returns the loss to minimise.
:func:`surgery.finetune` takes one with ``defense=``.
"""
from __future__ import annotations

import abc
import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from ..modes import eval_mode

__all__ = ["Defense", "ScoreFn", "LossFn", "TrainingScore", "as_at_inference"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainingScore:
    """The score function :func:`surgery.finetune` hands a defence: ``score(images)`` runs
    the network in its training mode; inside ``score.at_inference()`` it runs in eval mode
    (running statistics, no dropout), as an attacker sees the finished model."""

    def __init__(self, network: nn.Module, scores: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        self.network = network
        self._scores = scores

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self._scores(self.network, images)

    @contextlib.contextmanager
    def at_inference(self) -> Iterator[None]:
        with eval_mode(self.network):
            yield


def as_at_inference(score: ScoreFn) -> contextlib.AbstractContextManager:
    """``score.at_inference()`` where the score function has one (finetune's does), else nothing."""
    return score.at_inference() if isinstance(score, TrainingScore) else contextlib.nullcontext()


class Defense(abc.ABC):
    """Base class: ``defense.loss(score, images, targets, task_loss) -> scalar loss``."""

    @abc.abstractmethod
    def loss(self, score: ScoreFn, images: torch.Tensor, targets: torch.Tensor, task_loss: LossFn) -> torch.Tensor:
        """The training loss for one batch with the defence applied."""

    def attack_budget(self) -> float | None:
        """The l_inf radius the defence attacks the batch within (None: it attacks nothing). With
        validation data, :func:`surgery.finetune` runs a multi-step attack at this radius after
        every epoch, to catch catastrophic overfitting (Wong et al. 2020)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"
