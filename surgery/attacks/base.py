"""Common interface of the adversarial attacks used to measure IQA robustness.

The threat model of Meleshin et al. (§1, §4): an attacker perturbs an image in
[0, 1] within a budget to move an NR-IQA model's score, usually up. Every attack
takes ``(model, images)`` and returns adversarial images that stay in [0, 1] and
inside the budget. Attacks work on any module that maps images to scores (pyiqa
metrics included), run it in eval mode with frozen weights and give it back as it
came (every module's mode, ``requires_grad``, parameters, buffers and ``.grad``).

What an attack maximises is its objective: the score (``"up"``), its negative
(``"down"``), or the squared distance from the clean image's score (``"away"``, either
way: what consistency training needs). Training defences run the same attacks on the
score function they are given with :meth:`Attack.run`. An attack with a ``seed`` draws
its random start from that seed on every call, so its result is reproducible from the
call alone (and the evaluation cache, which keys on every setting, tells seeds apart).
"""
from __future__ import annotations

import abc
import contextlib
from typing import Callable, Iterator, Literal

import torch
from torch import nn

from ..modes import measuring
from ..scoring import as_model_input, check_images, model_device, score_fn

__all__ = ["Attack", "Direction", "Objective", "objective"]

Direction = Literal["up", "down", "away"]
DIRECTIONS = ("up", "down", "away")
Objective = Callable[[torch.Tensor], torch.Tensor]  # candidate images -> per-image values to maximise


def objective(score: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, direction: Direction) -> Objective:
    """What an attack on ``images`` maximises: ``score`` (up), ``-score`` (down) or the squared
    gap to the clean images' scores (away; one forward pass to read them)."""
    if direction == "up":
        return score
    if direction == "down":
        return lambda x: -score(x)
    if direction == "away":
        with torch.no_grad():
            clean = score(images).detach()
        return lambda x: (score(x) - clean).square()
    raise ValueError(f"direction must be one of {', '.join(map(repr, DIRECTIONS))}, got {direction!r}")


class Attack(abc.ABC):
    """Base class: ``attack(model, images, direction="up") -> adversarial images``.

    Subclasses implement :meth:`perturb` on one batch that is already on the model's
    device, given the objective to maximise; the base class handles checking, eval mode
    and frozen weights (both restored afterwards), batching, device moves and the seed.
    """

    name: str = "attack"
    seed: int | None = None  # random attacks take it in their constructor

    def __call__(
        self, model: nn.Module, images: torch.Tensor, direction: Direction = "up", batch_size: int | None = None
    ) -> torch.Tensor:
        check_images(images)
        batch_size = batch_size or images.shape[0]
        out = []
        with measuring(model), self.seeded(model_device(model)):
            for start in range(0, images.shape[0], batch_size):
                batch = as_model_input(images[start : start + batch_size], model)
                out.append(self.run(score_fn(model), batch, direction).to(images.device, images.dtype))
        return torch.cat(out)

    def run(self, score: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, direction: Direction = "up") -> torch.Tensor:
        """The attack on a score function as it is: no checks, no mode changes, no seed (the
        global RNG is used). What training defences call, with the model in the mode they chose."""
        with torch.enable_grad():
            return self.perturb(objective(score, images, direction), images).detach().clamp_(0, 1)

    @contextlib.contextmanager
    def seeded(self, device: torch.device) -> Iterator[None]:
        """The attack's own random stream when it has a seed; the global RNG is left as it was."""
        if self.seed is None:
            yield
            return
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            yield

    @abc.abstractmethod
    def perturb(self, objective: Objective, images: torch.Tensor) -> torch.Tensor:
        """Adversarial version of ``images`` that raises ``objective`` (per-image values)."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
