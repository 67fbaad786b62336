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

__all__ = ["Attack", "scores", "score_fn", "check_images", "check_budget", "check_count", "model_device", "is_pyiqa_metric", "per_image_scores", "scoring_network", "Direction"]

Direction = Literal["up", "down"]


def is_pyiqa_metric(model: nn.Module) -> bool:
    return hasattr(model, "net") and hasattr(model, "as_loss") and hasattr(model, "metric_mode")


def per_image_scores(output, batch: int) -> torch.Tensor:
    """One score per image from a model's output: (B,), (B, 1), or a tuple whose first item is that."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not torch.is_tensor(output):
        kind = f"a dict with keys {sorted(output)[:5]}" if isinstance(output, dict) else type(output).__name__
        raise TypeError(
            f"the model returns {kind}, not a tensor of scores: wrap it in a module whose forward returns "
            "one score per image, shape (B,) or (B, 1)"
        )
    if output.numel() != batch:
        raise ValueError(
            f"the model returns shape {tuple(output.shape)} for {batch} image(s), not one score per image: wrap it "
            "in a module that returns the quality score alone, shape (B,) or (B, 1) (e.g. select its score column)"
        )
    return output.reshape(batch)


def scoring_network(model: nn.Module) -> nn.Module:
    """The module that maps images to scores with gradients: a pyiqa metric's ``net``
    (its ``forward`` switches gradients off unless built ``as_loss``), else the model."""
    return model.net if is_pyiqa_metric(model) else model


def score_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function images -> (B,) scores with gradients to the images.

    pyiqa metrics switch gradients off in their ``forward`` unless built ``as_loss``;
    their network is called directly instead (it normalises the input itself).
    """
    network = scoring_network(model)

    def score(images: torch.Tensor) -> torch.Tensor:
        return per_image_scores(network(images), images.shape[0])

    return score


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Reject what is not a batch of images in [0, 1] with an error that says so."""
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"expected images as a (batch, 3, H, W) or (batch, 1, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}: divide uint8 images by 255")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"got an empty batch of images, shape {tuple(images.shape)}: pass at least one image")
    if not torch.isfinite(images).all():
        bad = (~torch.isfinite(images)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"image(s) {bad[:10]} contain NaN or inf pixels: fix or drop them before scoring or attacking")
    low, high = float(images.min()), float(images.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(
            f"images must be in [0, 1], got values in [{low:.3g}, {high:.3g}]: "
            "pass unnormalised images (the model normalises them itself)"
        )
    return images


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


def scores(model: nn.Module, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Model scores for a batch of images, without gradients, in chunks: (N,) on the CPU."""
    check_images(images)
    score = score_fn(model)
    device = model_device(model)
    out = []
    with torch.no_grad(), measuring(model):
        for start in range(0, images.shape[0], batch_size):
            out.append(score(images[start : start + batch_size].to(device)).float().cpu())
    result = torch.cat(out)
    if not torch.isfinite(result).all():
        bad = (~torch.isfinite(result)).nonzero().flatten().tolist()
        raise ValueError(f"the model returned NaN or inf for image(s) {bad[:10]}: check the model and its weights")
    return result


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


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
        device = model_device(model)
        batch_size = batch_size or images.shape[0]
        out = []
        with measuring(model):
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(device)
                out.append(self.perturb(score_fn(model), batch, sign).detach().clamp_(0, 1).to(images.device))
        return torch.cat(out)

    @abc.abstractmethod
    def perturb(self, score: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, sign: float) -> torch.Tensor:
        """Adversarial version of ``images`` that moves ``sign * score`` up."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
