"""How the library talks to a model: images in [0, 1] in, one score per image out.

Any ``nn.Module`` that maps a ``(B, 3, H, W)`` batch in [0, 1] to ``(B,)`` or ``(B, 1)``
scores (or a tuple whose first item is that) is a quality model here. pyiqa metrics are
recognised and scored through their network, since their ``forward`` switches gradients
off. A model may carry its score range (``model.score_range = (low, high)``, e.g. the
range of the labels it was trained on): :func:`surgery.evaluate` normalises AbsGain and
R-Score with it by default (Meleshin et al. §4).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .modes import measuring

__all__ = [
    "is_pyiqa_metric", "per_image_scores", "scoring_network", "score_fn", "scores", "check_images", "model_device",
    "model_dtype", "as_model_input",
    "model_score_range",
]


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


def check_images(images: torch.Tensor, indices: Sequence[int] | None = None, what: str = "image") -> torch.Tensor:
    """Reject what is not a batch of images in [0, 1] with an error that says so; ``indices``
    are the batch's positions in its dataset, named in the error instead of batch positions,
    and ``what`` names the images (e.g. "val image")."""
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"expected {what}s as a (batch, 3, H, W) or (batch, 1, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"expected float {what}s in [0, 1], got dtype {images.dtype}: divide uint8 images by 255")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"got an empty batch of {what}s, shape {tuple(images.shape)}: pass at least one image")
    named = lambda mask: [int(indices[i]) if indices is not None else i for i in mask.nonzero().flatten().tolist()]  # noqa: E731
    finite = torch.isfinite(images).flatten(1).all(1)
    if not finite.all():
        raise ValueError(f"{what}(s) {named(~finite)[:10]} contain NaN or inf pixels: fix or drop them before scoring or attacking")
    low, high = images.flatten(1).amin(1), images.flatten(1).amax(1)
    outside = (low < -1e-6) | (high > 1 + 1e-6)
    if outside.any():
        raise ValueError(
            f"{what}s must be in [0, 1], got values in [{float(low.min()):.3g}, {float(high.max()):.3g}] "
            f"({what}(s) {named(outside)[:10]}): pass unnormalised images (the model normalises them itself)"
        )
    return images


def scores(model: nn.Module, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Model scores for a batch of images, without gradients, in chunks: (N,) on the CPU."""
    check_images(images)
    score = score_fn(model)
    out = []
    with torch.no_grad(), measuring(model):
        for start in range(0, images.shape[0], batch_size):
            out.append(score(as_model_input(images[start : start + batch_size], model)).float().cpu())
    result = torch.cat(out)
    if not torch.isfinite(result).all():
        bad = (~torch.isfinite(result)).nonzero().flatten().tolist()
        raise ValueError(f"the model returned NaN or inf for image(s) {bad[:10]}: check the model and its weights")
    return result


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's weights (float32 when it has none): images are cast
    to it, so float64 images score on a float32 model."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return param.dtype if param is not None else torch.float32


def as_model_input(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Images on the model's device in its floating dtype."""
    return images.to(model_device(model), model_dtype(model))


def model_score_range(model: nn.Module) -> tuple[float, float] | None:
    """The ``score_range`` a model carries (a pair of finite numbers, low < high), or None."""
    value = getattr(model, "score_range", None)
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{type(model).__name__}.score_range must be a pair (low, high), got {value!r}") from err
    if not low < high:
        raise ValueError(f"{type(model).__name__}.score_range must have low < high, got {value!r}")
    return low, high
