"""Choosing the blend on the user's validation data: ``robustify(model, train, val)`` (its
``target=0.99``, the robust recipe's).

The robust recipes fine-tune with a consistency strength that overshoots (more robust than
needed, less accurate), and the blend (:func:`~surgery.blend`, WiSE-FT, Wortsman et al.
2022) moves the weights back toward the original's: blending costs forward passes only,
so every keep of a grid is measured on validation and the operating point is chosen
there, never on the data a result is reported on (with a ``head``, also the blends that keep
the head's change whole and blend the rest). The choice: the most robust blend whose
validation SROCC keeps at least ``target`` of the original's; robustness is the mean
AbsGain of a random-start PGD raising and one lowering the score of a few validation images,
each model's normalised by the range of its own validation scores (a fine-tune that squashes
its scores toward their mean shrinks every score change with them without being any harder
to fool; in the original's range that squash would pass for robustness). A blend is as
robust as its worse direction, its gain as a multiple of the original's in that direction: a
calibration that watched one direction chose blends that trade the other away.
:class:`Calibration` is the report. With a ``cache_dir`` the measurements are kept, keyed by
both models' weights, the validation images and scores and every setting of the measurement,
so a rerun (or another ``target``) chooses again without attacking anything.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed, metrics
from .attacks import PGD
from .batches import ImageStream
from .blending import blend
from .evaluation import clean_pass
from .files import atomic_write_text
from .fingerprint import model_fingerprint, update_digest
from .scoring import model_device, scores

__all__ = ["Calibration", "calibrate_blend", "check_target", "choose", "KEEP_GRID"]

KEEP_GRID: tuple[float, ...] = tuple(k / 10 for k in range(1, 11))


@dataclass
class Calibration:
    """What ``robustify(target=...)`` chose and why: the keep, validation SROCC and the quick
    robustness figure for the original and the result (``val_gain``: the AbsGain per direction
    attacked; ``val_x``: the result's worse direction as a multiple of the original's), and every
    blend measured (``grid``). ``head_keep`` is the keep of the ``head`` modules (the keep itself,
    or 1.0 when the head's change is kept whole); :attr:`blend_keep` is what :func:`~surgery.blend` takes."""

    target: float
    keep: float
    met: bool
    val_srocc_original: float
    val_srocc: float
    val_gain_original: dict[str, float]
    val_gain: dict[str, float]
    val_x: float
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
        chosen = _blend_name(self.keep, self.head_keep, self.head)
        verdict = (
            f"{chosen}: the most robust blend whose validation SROCC keeps >= {self.target:.1%} of the original's"
            if self.met else
            f"{chosen}: NO blend keeps {self.target:.1%} of the original's validation SROCC; this one keeps the most"
        )
        directions = list(self.val_gain_original)
        gains = ", ".join(f"{d} {self.val_gain_original[d]:.4f} -> {self.val_gain[d]:.4f}" for d in directions)
        lines = [
            verdict,
            f"validation SROCC {self.val_srocc_original:.4f} -> {self.val_srocc:.4f} ({kept:.1%} kept)",
            f"{self.attack} AbsGain on validation images: {gains} ({self.val_x:.2f}x the original's in the worse direction)",
            "| keep | head keep | val SROCC | kept | " + " | ".join(f"val AbsGain {d}" for d in directions) + " | worse x |",
            "|---|---|---|---|" + "---|" * (len(directions) + 1),
        ]
        lines += [
            f"| {r['keep']:g} | {r['head_keep']:g} | {r['val_srocc']:.4f} | {r['srocc_kept']:.1%} | "
            + " | ".join(f"{r['val_gain'][d]:.4f}" for d in directions) + f" | {r['val_x']:.2f} |"
            for r in self.grid
        ]
        return "\n".join(lines)


def _blend_name(keep: float, head_keep: float | None, head: Sequence[str]) -> str:
    """``"keep 0.3"``, and which modules keep their change whole when the head's keep is not the keep."""
    whole = head_keep is not None and head_keep != keep
    return f"keep {keep:g}" + (f" (the head's change kept whole: {', '.join(head)})" if whole else "")


def _ratio(gain: float, original: float) -> float:
    """``gain`` as a multiple of the original's (a model the attack cannot move: 0, or inf when the blend moves)."""
    return gain / original if original > 0 else (0.0 if gain <= 0 else float("inf"))


def _measure(model: nn.Module, stream: ImageStream, mos: torch.Tensor | None, attacked: list, attack: PGD,
             directions: Sequence[str]):
    """Validation SROCC, the attack's AbsGain (its size) in each direction on the ``attacked``
    batches of the stream in the range of the model's own validation scores, and the MOS
    (``mos``, else the data's own)."""
    clean, carried = clean_pass(model, stream)
    mos = carried if mos is None else mos
    if not torch.isfinite(mos).all():
        raise ValueError("calibration needs a score for every validation image: pass val as (images, scores) or (image, score) items")
    # batch by batch: a Dataset's images may differ in size from one batch to the next
    where = torch.cat([b.indices for b in attacked])
    lo, hi = metrics.score_range(clean)
    gains = {}
    for direction in directions:
        moved = torch.cat([scores(model, attack(model, b.images, direction), b.images.shape[0]) for b in attacked])
        sign = 1 if direction == "up" else -1  # a lowering's AbsGain is negative: its size
        gains[direction] = sign * metrics.abs_gain(clean[where], moved, lo, hi)
    return metrics.srocc(clean, mos), gains, mos


def check_target(target) -> None:
    """Refuse a ``target`` that is not a share of the original's validation SROCC in (0, 1]."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(
            f"target must be the share of the original's validation SROCC to keep, in (0, 1] (e.g. 0.99), got {target!r}"
        )


def choose(grid: list[dict], target: float) -> tuple[dict, bool]:
    """The grid row chosen for ``target`` and whether it meets it: the lowest ``val_x`` (the
    worse direction's gain as a multiple of the original's) among the rows whose
    ``srocc_kept`` >= ``target`` (ties: the larger keep, then the larger head keep), else the
    row of the highest ``val_srocc``."""
    passing = [r for r in grid if r["srocc_kept"] >= target]
    if not passing:
        return max(grid, key=lambda r: r["val_srocc"]), False
    return min(passing, key=lambda r: (r["val_x"], -r["keep"], -r["head_keep"])), True


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
    directions: Sequence[str] = ("up", "down"),
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> Calibration:
    """Measure every blend of ``tuned`` toward ``original`` in ``keeps`` on ``val`` and choose
    (see the module docstring); neither model is changed. With ``head`` (module names, e.g.
    :meth:`surgery.blockmap.ModelMap.pooled_head`), the blends that keep the head's change
    whole and ``0`` or a keep below 1 of the rest are measured too, and the choice is among
    all. The attack: PGD with a random start, ``steps`` steps at ``eps``, seeded, in each of
    ``directions`` (raising and lowering the score), on ``attack_images`` validation images
    evenly spaced through ``val`` (a validation set in order of its reference images is
    attacked across them, not on the distortions of the first one or two). ``cache_dir``: where
    the measurements are kept (``calibration-<key>.json``) and found again by a call that would
    measure the same: the same weights of both models, validation images and scores, and
    settings (``target`` aside: it only chooses). ``progress``: a bar on stderr, one step a blend."""
    check_target(target)
    if isinstance(attack_images, bool) or not isinstance(attack_images, int) or attack_images < 1:
        raise ValueError(f"attack_images must be a count of validation images >= 1, got {attack_images!r}")
    head = tuple(head)
    unknown = sorted(set(head) - (dict(tuned.named_modules()).keys() - {""}))
    if unknown or len(set(head)) != len(head):
        raise ValueError(
            f"head must name distinct modules of the model, not the whole model (''): got {list(head)[:5]}"
            " (e.g. locate(...).pooled_head())"
        )
    directions = tuple(directions)
    if not directions or len(set(directions)) != len(directions) or not set(directions) <= {"up", "down"}:
        raise ValueError(f"directions must be 'up', 'down' or both, each once, got {list(directions)}")
    keeps = sorted(set(float(k) for k in keeps))
    if not keeps or not all(0 <= k <= 1 for k in keeps):
        raise ValueError(f"keeps must be fractions in [0, 1], got {keeps!r}")
    tensors = isinstance(val, (tuple, list)) and len(val) == 2 and all(torch.is_tensor(t) for t in val)
    images, mos = (val[0], val[1].reshape(-1).double()) if tensors else (val, None)
    if mos is not None and mos.numel() != images.shape[0]:
        raise ValueError(f"val: {images.shape[0]} images but {mos.numel()} scores")
    stream = ImageStream(images, batch_size, what="val image")
    settings = {"keeps": keeps, "attack_images": attack_images, "eps": eps, "steps": steps, "batch_size": batch_size,
                "seed": seed, "head": list(head), "directions": list(directions)}
    path = None
    if cache_dir is not None:
        path = os.path.join(os.fspath(cache_dir), f"calibration-{_measurement_key(original, tuned, stream, mos, settings)}.json")
    measured = _read_measurements(path)
    if measured is None:
        measured = _measure_blends(original, tuned, stream, mos, settings, progress and distributed.rank() == 0)
        if path is not None and distributed.rank() == 0:
            atomic_write_text(json.dumps(measured, indent=1), path)
    return _chosen(measured, target, head)


# what a cached measurement means: raised whenever the measurement changes (the attack, the
# gain, the blends measured), so a cache written by an older surgery is measured afresh
_MEASUREMENT_FORMAT = 1


def _measurement_key(original: nn.Module, tuned: nn.Module, stream: ImageStream, mos: torch.Tensor | None,
                     settings: dict[str, Any]) -> str:
    """Sixteen hex digits of everything the measurements depend on: the measurement's format,
    both models (class, structure, every parameter and buffer) and the kind of device each runs
    on, every validation image and score in order, and the settings."""
    models = {
        role: [f"{type(m).__module__}.{type(m).__qualname__}", repr(m), model_fingerprint(m), model_device(m).type]
        for role, m in (("original", original), ("tuned", tuned))
    }
    digest = hashlib.sha256(json.dumps({"format": _MEASUREMENT_FORMAT, **models, **settings}, sort_keys=True, default=repr).encode())
    for batch in stream.batches(shard=False):
        update_digest(digest, batch.indices)
        update_digest(digest, batch.images)
        update_digest(digest, batch.scores.double())
    if mos is not None:
        update_digest(digest, mos)
    return digest.hexdigest()[:16]


def _read_measurements(path: str | None) -> dict[str, Any] | None:
    """The measurements cached at ``path``, or None to measure (none there, or unreadable: a
    file cut short is measured again and replaced). Under a process group rank 0 decides for
    every rank, and the others read only after it has (its file of an earlier call is written by
    then), so they all measure, with their collectives, or none does."""
    measured = _read_json(path) if distributed.rank() == 0 else None
    found = bool(distributed.broadcast_from_first(torch.tensor(int(measured is not None))))
    if found and measured is None:
        measured = _read_json(path)
        if measured is None:
            raise FileNotFoundError(f"rank 0 found the calibration's measurements at {path!r} and this rank cannot read them: "
                                    "pass a checkpoint_dir every rank shares")
    return measured if found else None


def _read_json(path: str | None) -> dict[str, Any] | None:
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def _measure_blends(original: nn.Module, tuned: nn.Module, stream: ImageStream, mos: torch.Tensor | None,
                    settings: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    """The original's and every blend's validation SROCC and gains (Python floats: cached as JSON)."""
    keeps, head, directions = settings["keeps"], tuple(settings["head"]), tuple(settings["directions"])
    picked = torch.linspace(0, len(stream) - 1, min(settings["attack_images"], len(stream))).round().long().unique().tolist()
    attacked = list(stream.batches(picked, shard=False))
    attack = PGD(eps=settings["eps"], steps=settings["steps"], random_start=True, seed=settings["seed"])
    srocc_0, gain_0, mos = _measure(original, stream, mos, attacked, attack, directions)
    if not srocc_0 > 0:  # a share of a SROCC <= 0 would pass blends for keeping more the worse they rank
        raise ValueError(
            f"the original's validation SROCC is {srocc_0:.4f}: calibrating keeps a share of it, which needs scores that rise "
            "with the validation MOS; check the labels' direction (negate a lower-is-better score) or pass target=None"
        )
    work = copy.deepcopy(tuned)  # each keep blends a fresh copy of the tuned weights, which stay as they are
    points = [(keep, keep) for keep in keeps]
    if head:
        points += [(keep, 1.0) for keep in sorted({0.0, *keeps}) if keep < 1.0]
    grid = []
    for keep, head_keep in tqdm(points, desc="calibrating the blend on validation", unit="blend", disable=not progress, leave=False):
        work.load_state_dict(tuned.state_dict())
        amount = keep if head_keep == keep else {"": keep, **{name: head_keep for name in head}}
        srocc, gain, _ = _measure(blend(work, original, amount), stream, mos, attacked, attack, directions)
        worse = max(_ratio(gain[d], gain_0[d]) for d in directions)
        grid.append({"keep": keep, "head_keep": head_keep, "val_srocc": srocc, "srocc_kept": srocc / srocc_0, "val_gain": gain,
                     "val_x": worse})
    attack_name = f"pgd-{settings['steps']}-rs at {settings['eps'] * 255:g}/255"
    return {"attack": attack_name, "val_srocc_original": srocc_0, "val_gain_original": gain_0, "grid": grid}


def _chosen(measured: dict[str, Any], target: float, head: tuple[str, ...]) -> Calibration:
    """The report of the blend :func:`choose` picks for ``target`` from the measurements."""
    chosen, met = choose(measured["grid"], target)
    if not met:
        warnings.warn(
            f"robustify: no blend keeps {target:.1%} of the original's validation SROCC ({measured['val_srocc_original']:.4f}); "
            f"{_blend_name(chosen['keep'], chosen['head_keep'], head)} keeps the most ({chosen['srocc_kept']:.1%}): "
            "lower target or use a weaker defence",
            stacklevel=4,
        )
    return Calibration(
        target=float(target), keep=chosen["keep"], met=met, val_srocc_original=measured["val_srocc_original"],
        val_srocc=chosen["val_srocc"], val_gain_original=measured["val_gain_original"], val_gain=chosen["val_gain"],
        val_x=chosen["val_x"], attack=measured["attack"], grid=measured["grid"], head_keep=chosen["head_keep"], head=head,
    )
