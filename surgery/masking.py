"""Gradient-masking checks: is a model hard to fool, or only hard to differentiate?

A defence that breaks or hides the gradient (Athalye et al., "Obfuscated gradients give a
false sense of security", ICML 2018) looks robust to gradient attacks while a different
attack still fools it. Carlini et al. ("On evaluating adversarial robustness", 2019, §5)
list the symptoms, each a check here on the same images and budget:

- random noise of the budget gains far less than the white-box attacks (<= 1/4 of the best);
- more attack steps gain at least as much (PGD-1 <= PGD-8 <= APGD-50, up to a tolerance);
- adversarials crafted on the undefended ``original`` gain less than the white-box attacks;
- a score-based black-box attack (Square, no gradients) gains less than the white-box attacks.

:func:`masking_checks` returns a :class:`~surgery.Table`: one row per check with its
AbsGain, what it is compared with and that one's AbsGain, and whether it passed; the summary says whether
every check passed and names those that did not.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import metrics
from .attacks import APGD, PGD, Attack, Square
from .batches import ImageData, ImageStream
from .evaluation import Table
from .scoring import model_score_range, scores

__all__ = ["masking_checks"]

TOLERANCE = 0.005  # AbsGain by which a stronger attack may fall short of a weaker one (seed noise)


def _gains(model: nn.Module, attacks: dict[str, Attack], stream: ImageStream, direction: str, crafted_on: dict[str, nn.Module]):
    """Clean scores and, per attack, the scores of its adversarials (crafted on ``crafted_on[name]``
    when named there, else on the model), batch by batch."""
    clean, attacked = [], {name: [] for name in attacks}
    for batch in stream.batches(shard=False):
        count = batch.images.shape[0]
        clean.append(scores(model, batch.images, count))
        for name, attack in attacks.items():
            attacked[name].append(scores(model, attack(crafted_on.get(name, model), batch.images, direction=direction), count))
    return torch.cat(clean), {name: torch.cat(values) for name, values in attacked.items()}


class _Noise(Attack):
    """Random signs of the budget: what an attack that learnt nothing would do."""

    name = "noise"

    def __init__(self, eps: float, seed: int | None):
        self.eps, self.seed = eps, seed

    def perturb(self, objective, images: torch.Tensor) -> torch.Tensor:
        return images + self.eps * (torch.randint(0, 2, images.shape, device=images.device) * 2 - 1).to(images.dtype)


def masking_checks(
    model: nn.Module,
    images: ImageData,
    *,
    original: nn.Module | None = None,
    eps: float = 8 / 255,
    steps: Sequence[int] = (1, 8),
    strong_steps: int = 50,
    queries: int = 500,
    direction: str = "up",
    score_range: tuple[float, float] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    name: str = "model",
) -> Table:
    """The gradient-masking checks for ``model`` on ``images`` at budget ``eps`` (see the module
    docstring): PGD with each of ``steps`` (from the clean image, steps of 2.5 eps / K, best
    iterate), APGD with ``strong_steps``, Square with ``queries``, random sign noise and, with
    ``original``, the largest PGD crafted on it; every random attack seeded with ``seed``. Gains are AbsGain sizes
    (lowering attacks' gains negated when ``direction="down"``), normalised by ``score_range``,
    else the model's own, else the range of its clean scores on ``images``."""
    if direction not in ("up", "down"):
        raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
    if not steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps):
        raise ValueError(f"steps must be attack step counts >= 1, got {steps!r}")
    # steps of 2.5 eps / K (Madry et al.) so every K can reach the budget; the best iterate kept
    ladder = {f"pgd-{s}": PGD(eps=eps, steps=s, alpha=2.5 * eps / s, best_iterate=True) for s in sorted(set(steps))}
    ladder[f"apgd-{strong_steps}"] = APGD(eps=eps, steps=strong_steps, seed=seed)
    attacks: dict[str, Attack] = {**ladder, f"square-{queries}": Square(eps=eps, queries=queries, seed=seed), "noise": _Noise(eps, seed)}
    crafted_on = {}
    largest = f"pgd-{max(steps)}"
    if original is not None:
        attacks["transfer"] = ladder[largest]
        crafted_on["transfer"] = original
    clean, attacked = _gains(model, attacks, ImageStream(images, batch_size), direction, crafted_on)
    lo, hi = score_range or model_score_range(model) or metrics.score_range(clean)
    size = 1.0 if direction == "up" else -1.0
    gain = {key: size * metrics.abs_gain(clean, values, lo, hi) for key, values in attacked.items()}
    white_box = max(gain[key] for key in ladder)
    at = f"{eps * 255:g}/255"
    rows = [
        _check(name, f"noise gains <= 1/4 of the best white-box ({at})", "noise", gain["noise"], "1/4 best white-box",
               0.25 * white_box, gain["noise"] <= 0.25 * white_box),
    ]
    names = list(ladder)
    for weaker, stronger in zip(names, names[1:]):
        rows.append(_check(name, f"{stronger} gains >= {weaker} ({at})", stronger, gain[stronger], weaker, gain[weaker],
                           gain[stronger] >= gain[weaker] - TOLERANCE))
    if original is not None:
        rows.append(_check(name, f"{largest} crafted on the original gains <= the best white-box ({at})", "transfer",
                           gain["transfer"], "best white-box", white_box, gain["transfer"] <= white_box + TOLERANCE))
    black_box = f"square-{queries}"
    rows.append(_check(name, f"{black_box} (black-box) gains <= the best white-box ({at})", black_box, gain[black_box],
                       "best white-box", white_box, gain[black_box] <= white_box + TOLERANCE))
    failed = [r["check"] for r in rows if not r["passed"]]
    summary = {"model": name, "n": int(clean.numel()), "eps": round(eps * 255, 6), "direction": direction,
               "best white-box abs_gain": white_box, "passed": not failed, "failed": "; ".join(failed) or "-"}
    return Table(rows=rows, summaries=[summary])


def _check(model: str, check: str, attack: str, value: float, against: str, reference: float, passed: bool) -> dict:
    """One row: ``attack``'s AbsGain, compared with ``against``'s (``reference``)."""
    return {
        "model": model, "check": check, "attack": attack, "abs_gain": value, "against": against, "reference": reference,
        "passed": bool(passed),
    }
