"""Universal adversarial perturbation (Moosavi-Dezfooli et al. 2017) for IQA, as in
Meleshin et al. §4: one perturbation, trained over a set of images (10 iterations
by default), then added to any image.

The perturbation lives at a fixed resolution and is resized (bilinear) to each
image; it is trained by sign-gradient ascent on the mean score within an l_inf
ball of radius ``eps``. :meth:`UAP.fit` trains it, calling the attack applies it
(training on the attacked batch first if it was never fitted), and ``save`` /
``load`` keep it as a plain tensor file.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..files import atomic_save
from ..modes import measuring
from ..scoring import as_model_input, check_images, score_fn
from ..checks import check_budget, check_count
from .base import Attack, Direction, Objective, objective

__all__ = ["UAP"]


class UAP(Attack):
    name = "uap"

    def __init__(
        self, eps: float = 10 / 255, iterations: int = 10, alpha: float | None = None, size: tuple[int, int] = (224, 224)
    ):
        check_budget("UAP", eps=eps)
        check_count("UAP", iterations=iterations)
        if alpha is not None:
            check_budget("UAP", alpha=alpha)
        self.eps = float(eps)
        self.iterations = int(iterations)
        self.alpha = eps / 4 if alpha is None else float(alpha)
        self.size = tuple(size)
        self.perturbation: torch.Tensor | None = None

    def _resized(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        delta = self.perturbation.to(device)
        if delta.shape[-2:] != (height, width):
            delta = F.interpolate(delta[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        return delta.clamp(-self.eps, self.eps)

    def fit(
        self, model: nn.Module, images: torch.Tensor | Iterable[torch.Tensor], direction: Direction = "up", batch_size: int = 16
    ) -> torch.Tensor:
        """Train the perturbation on ``images``: a tensor (in batches of ``batch_size``) or a
        re-iterable of batches, read once per iteration (images streamed from disk); returns it,
        (3, *size)."""
        if torch.is_tensor(images):
            check_images(images)
            images = list(images.split(batch_size))
        score = score_fn(model)
        delta = None
        with measuring(model):
            for _ in range(self.iterations):
                for batch in images:
                    batch = as_model_input(batch, model)
                    if delta is None:
                        delta = torch.zeros(batch.shape[1], *self.size, device=batch.device)
                    delta.requires_grad_(True)
                    resized = F.interpolate(delta[None], size=batch.shape[-2:], mode="bilinear", align_corners=False)
                    value = objective(score, batch, direction)((batch + resized).clamp(0, 1)).mean()
                    (grad,) = torch.autograd.grad(value, delta)
                    with torch.no_grad():
                        delta = (delta + self.alpha * grad.sign()).clamp(-self.eps, self.eps)
        if delta is None:
            raise ValueError("UAP.fit got no images")
        self.perturbation = delta.detach().cpu()
        return self.perturbation

    def perturb(self, objective: Objective, images: torch.Tensor) -> torch.Tensor:
        return images + self._resized(*images.shape[-2:], images.device)

    def __call__(self, model, images, direction: Direction = "up", batch_size: int | None = None) -> torch.Tensor:
        if self.perturbation is None:
            self.fit(model, images, direction, batch_size or 16)
        return super().__call__(model, images, direction, batch_size)

    def save(self, path: str | os.PathLike) -> None:
        if self.perturbation is None:
            raise ValueError("nothing to save: call fit() first")
        atomic_save({"perturbation": self.perturbation, "eps": self.eps}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> "UAP":
        data = torch.load(path, map_location="cpu", weights_only=True)
        attack = cls(eps=data["eps"], size=tuple(data["perturbation"].shape[-2:]), **kwargs)
        attack.perturbation = data["perturbation"]
        return attack
