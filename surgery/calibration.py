"""Choosing the blend on the user's validation data: ``robustify(..., target=0.99)``.

The robust recipes fine-tune with a consistency strength that overshoots (more robust than
needed, less accurate), and the blend (:func:`~surgery.blend`, WiSE-FT, Wortsman et al.
2022) moves the weights back toward the original's: blending costs forward passes only,
so every keep of a grid is measured on validation and the operating point is chosen
there, never on the data a result is reported on (with a ``head``, also the blends that keep
the head's change whole and blend the rest). The choice: the most robust blend whose
validation SROCC keeps at least ``target`` of the original's; robustness is the mean
AbsGain of a random-start PGD raising the score of a few validation images, each model's
normalised by the range of its own validation scores (a fine-tune that squashes its scores
toward their mean shrinks every score change with them without being any harder to fool; in
the original's range that squash would pass for robustness). :class:`Calibration` is the report.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from . import metrics
from .attacks import PGD
from .batches import ImageStream
from .blending import blend
from .evaluation import clean_pass
from .scoring import scores

__all__ = ["Calibration", "calibrate_blend", "choose", "KEEP_GRID"]

KEEP_GRID: tuple[float, ...] = tuple(k / 10 for k in range(1, 11))


@dataclass
class Calibration:
    """What ``robustify(target=...)`` chose and why: the keep, validation SROCC and the quick
    robustness figure for the original and the result, and every blend measured (``grid``).
    ``head_keep`` is the keep of the ``head`` modules (the keep itself, or 1.0 when the head's
    change is kept whole); :attr:`blend_keep` is what :func:`~surgery.blend` takes."""

    target: float
    keep: float
    met: bool
    val_srocc_original: float
    val_srocc: float
    val_gain_original: float
    val_gain: float
    attack: str
    grid: list[dict] = field(default_factory=list)
    head_keep: float | None = None
    head: tuple[str, ...] = ()

    @property
    def blend_keep(self) -> float | dict[str, float]:
        """The chosen blend as :func:`~surgery.blend`'s ``keep``."""
        if self.head_keep is None or self.head_keep == self.keep:
            return self.keep
        return {"": self.keep, **{name: self.head_keep for name in self.head}}

    def __str__(self) -> str:
        kept = self.val_srocc / self.val_srocc_original
        chosen = f"keep {self.keep:g}" + (
            f" (the head's change kept whole: {', '.join(self.head)})" if self.blend_keep != self.keep else ""
        )
        verdict = (
            f"{chosen}: the most robust blend whose validation SROCC keeps >= {self.target:.1%} of the original's"
            if self.met else
            f"{chosen}: NO blend keeps {self.target:.1%} of the original's validation SROCC; this one keeps the most"
        )
        lines = [
            verdict,
            f"validation SROCC {self.val_srocc_original:.4f} -> {self.val_srocc:.4f} ({kept:.1%} kept)",
            f"{self.attack} AbsGain on validation images {self.val_gain_original:.4f} -> {self.val_gain:.4f} "
            f"({self.val_gain / self.val_gain_original:.2f}x the original's)" if self.val_gain_original > 0 else
            f"{self.attack} AbsGain on validation images {self.val_gain_original:.4f} -> {self.val_gain:.4f}",
            "| keep | head keep | val SROCC | kept | val AbsGain |", "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['keep']:g} | {r['head_keep']:g} | {r['val_srocc']:.4f} | {r['srocc_kept']:.1%} | {r['val_gain']:.4f} |"
            for r in self.grid
        ]
        return "\n".join(lines)


def _measure(model: nn.Module, stream: ImageStream, mos: torch.Tensor | None, attacked: torch.Tensor, attack: PGD):
    """Validation SROCC, the attack's AbsGain on the ``attacked`` images (the first of the
    stream) in the range of the model's own validation scores, and the MOS (``mos``, else the
    data's own)."""
    clean, carried = clean_pass(model, stream)
    mos = carried if mos is None else mos
    if not torch.isfinite(mos).all():
        raise ValueError("calibration needs a score for every validation image: pass val as (images, scores) or (image, score) items")
    gained = scores(model, attack(model, attacked), attacked.shape[0])
    lo, hi = metrics.score_range(clean)
    return metrics.srocc(clean, mos), metrics.abs_gain(clean[: attacked.shape[0]], gained, lo, hi), mos


def choose(grid: list[dict], target: float) -> tuple[dict, bool]:
    """The grid row chosen for ``target`` and whether it meets it: the lowest ``val_gain`` among
    the rows whose ``srocc_kept`` >= ``target`` (ties: the larger keep, then the larger head
    keep), else the row of the highest ``val_srocc``."""
    passing = [r for r in grid if r["srocc_kept"] >= target]
    if not passing:
        return max(grid, key=lambda r: r["val_srocc"]), False
    return min(passing, key=lambda r: (r["val_gain"], -r["keep"], -r.get("head_keep", r["keep"]))), True


def calibrate_blend(
    original: nn.Module,
    tuned: nn.Module,
    val,
    target: float,
    *,
    keeps: Sequence[float] = KEEP_GRID,
    attack_images: int = 16,
    eps: float = 4 / 255,
    steps: int = 10,
    batch_size: int = 8,
    seed: int = 0,
    head: Sequence[str] = (),
) -> Calibration:
    """Measure every blend of ``tuned`` toward ``original`` in ``keeps`` on ``val`` and choose
    (see the module docstring); neither model is changed. With ``head`` (module names, e.g.
    :meth:`surgery.blockmap.ModelMap.pooled_head`), the blends that keep the head's change
    whole and ``0`` or a keep below 1 of the rest are measured too, and the choice is among
    all. The attack: PGD with a random start, ``steps`` steps at ``eps``, seeded, on the first
    ``attack_images`` validation images."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"target must be the fraction of the original's validation SROCC to keep, in (0, 1], got {target!r}")
    head = tuple(head)
    unknown = sorted(set(head) - (dict(tuned.named_modules()).keys() - {""}))
    if unknown or len(set(head)) != len(head):
        raise ValueError(
            f"head must name distinct modules of the model, not the whole model (''): got {list(head)[:5]}"
            " (e.g. locate(...).pooled_head())"
        )
    keeps = sorted(set(float(k) for k in keeps))
    if not keeps or not all(0 <= k <= 1 for k in keeps):
        raise ValueError(f"keeps must be fractions in [0, 1], got {keeps!r}")
    tensors = isinstance(val, (tuple, list)) and len(val) == 2 and all(torch.is_tensor(t) for t in val)
    images, mos = (val[0], val[1].reshape(-1).double()) if tensors else (val, None)
    if mos is not None and mos.numel() != images.shape[0]:
        raise ValueError(f"val: {images.shape[0]} images but {mos.numel()} scores")
    stream = ImageStream(images, batch_size, what="val image")
    attacked = torch.cat([b.images for b in stream.batches(range(min(attack_images, len(stream))), shard=False)])
    attack = PGD(eps=eps, steps=steps, random_start=True, seed=seed)
    name = f"pgd-{steps}-rs at {eps * 255:g}/255"
    srocc_0, gain_0, mos = _measure(original, stream, mos, attacked, attack)
    work = copy.deepcopy(tuned)  # each keep blends a fresh copy of the tuned weights, which stay as they are
    points = [(keep, keep) for keep in keeps]
    if head:
        points += [(keep, 1.0) for keep in sorted({0.0, *keeps}) if keep < 1.0]
    grid = []
    for keep, head_keep in points:
        work.load_state_dict(tuned.state_dict())
        amount = keep if head_keep == keep else {"": keep, **{name: head_keep for name in head}}
        srocc, gain, _ = _measure(blend(work, original, amount), stream, mos, attacked, attack)
        grid.append({"keep": keep, "head_keep": head_keep, "val_srocc": srocc, "srocc_kept": srocc / srocc_0, "val_gain": gain})
    chosen, met = choose(grid, target)
    if not met:
        warnings.warn(
            f"robustify: no blend keeps {target:.1%} of the original's validation SROCC ({srocc_0:.4f}); keep "
            f"{chosen['keep']:g} keeps the most ({chosen['srocc_kept']:.1%}): lower target or use a weaker defence",
            stacklevel=3,
        )
    return Calibration(
        target=float(target), keep=chosen["keep"], met=met, val_srocc_original=srocc_0, val_srocc=chosen["val_srocc"],
        val_gain_original=gain_0, val_gain=chosen["val_gain"], attack=name, grid=grid, head_keep=chosen["head_keep"], head=head,
    )
