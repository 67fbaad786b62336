"""``evaluate`` and ``compare``: the paper's robustness protocol in one call (Meleshin et al. §4).

For each model: clean scores (and SROCC / PLCC / KROCC when MOS is given), then
every attack: PGD-1 and PGD-8 over the eps grid {2, 4, 6, 8, 10}/255 with
AbsGain and R-Score per eps and their areas under the curve (eps in units of
1/255), UAP and stAdv with AbsGain and R-Score. Scores are min-max normalised
with the model's score range: given, measured on ``train_images``, or (with a
warning in the table) measured on the evaluated images.

Long sweeps show a progress bar and, with ``cache=folder``, store every attacked
score as soon as its batch is done, so an interrupted run continues where it
stopped. Nothing here imports the surgery: any model can be evaluated.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from . import metrics
from .attacks import APGD, EPS_GRID, PGD, UAP, Attack, PaperPGD, Square, StAdv
from .scoring import as_model_input, check_images, model_score_range, score_fn, scores
from .modes import measuring
from .files import atomic_save, atomic_write_text
from .fingerprint import model_fingerprint, update_digest

__all__ = ["evaluate", "compare", "Table", "AttackSpec", "DEFAULT_ATTACKS", "resolve_attacks"]

AttackSpec = Union[str, Attack]
DEFAULT_ATTACKS: tuple[str, ...] = ("pgd-1", "pgd-8", "uap", "stadv")
COLUMNS = ("model", "attack", "eps", "n", "mean_score", "abs_gain", "r_score", "srocc", "plcc", "krocc")


def resolve_attacks(
    specs: AttackSpec | Iterable[AttackSpec], eps_grid: Sequence[float] = EPS_GRID, seed: int | None = None
) -> list[tuple[str, float | None, Attack]]:
    """(attack name, eps or None, attack) for every run a list of specs asks for.

    Over the eps grid: ``"pgd-K"`` (the paper's protocol; ``"fgsm"`` = ``"pgd-1"``),
    ``"pgd-K-rs"`` (strong PGD: random start, steps of 2.5 eps / K, best iterate),
    ``"apgd"`` / ``"apgd-K"`` (Auto-PGD, 50 or K steps), ``"square-Q"`` (Square Attack, Q
    queries: score-based, no gradients) and ``"paper-pgd-K"`` (the paper
    code's non-standard attack, which exceeds the budget). Once with their defaults:
    ``"uap"`` and ``"stadv"``. An :class:`Attack` instance runs as given. The attacks that
    draw random numbers (``pgd-K-rs``, ``apgd``, ``square-Q``, ``paper-pgd-K``) get ``seed``.
    """
    runs = []
    for spec in attack_list(specs):
        if isinstance(spec, Attack):
            runs.append((spec.name, getattr(spec, "eps", None), spec))
            continue
        key = str(spec).lower()
        if key == "fgsm":
            key = "pgd-1"
        build = _grid_attack(key, seed)
        if build is not None:
            runs.extend((key, eps, build(eps)) for eps in eps_grid)
        elif key == "uap":
            attack = UAP()
            runs.append((key, attack.eps, attack))
        elif key == "stadv":
            runs.append((key, None, StAdv()))
        else:
            raise ValueError(
                f"unknown attack {spec!r}: use 'pgd-K' (the paper's protocol, e.g. 'pgd-1', 'pgd-8', 'fgsm'), "
                "'pgd-K-rs', 'apgd', 'apgd-K', 'square-Q', 'paper-pgd-K', 'uap', 'stadv' or an Attack"
            )
    return runs


def attack_list(specs: AttackSpec | Iterable[AttackSpec]) -> list[AttackSpec]:
    """Attack specs as a list: one name or Attack is one attack, not a string of one-letter names."""
    return [specs] if isinstance(specs, (str, Attack)) else list(specs)


def _grid_attack(key: str, seed: int | None = None):
    """A builder eps -> attack for the names that expand over the eps grid, else None."""
    steps = lambda text: int(text) if text.isdigit() and int(text) >= 1 else None  # noqa: E731
    if key.startswith("paper-pgd-") and steps(key[10:]):
        return lambda eps: PaperPGD(eps=eps, steps=steps(key[10:]), seed=seed)
    if key.startswith("pgd-") and key.endswith("-rs") and steps(key[4:-3]):
        return lambda eps: PGD(eps=eps, steps=steps(key[4:-3]), random_start=True, seed=seed)
    if key.startswith("pgd-") and steps(key[4:]):
        return lambda eps: PGD(eps=eps, steps=steps(key[4:]))
    if key == "apgd":
        return lambda eps: APGD(eps=eps, seed=seed)
    if key.startswith("apgd-") and steps(key[5:]):
        return lambda eps: APGD(eps=eps, steps=steps(key[5:]), seed=seed)
    if key.startswith("square-") and steps(key[7:]):
        return lambda eps: Square(eps=eps, queries=steps(key[7:]), seed=seed)
    return None


def _fingerprint(images: torch.Tensor) -> str:
    digest = hashlib.sha1(str(tuple(images.shape)).encode())
    digest.update(images.detach().float().cpu().contiguous().numpy().tobytes()[:: max(1, images.numel() // 65536)])
    return digest.hexdigest()[:16]


def model_digest(model: nn.Module) -> str:
    """A digest of the class and every parameter and buffer: a re-hardened or further trained
    model under the same name gets fresh cached scores."""
    return hashlib.sha1(f"{type(model).__name__}:{model_fingerprint(model)}".encode()).hexdigest()[:12]


def attack_digest(attack: Attack) -> str:
    """A digest of every setting of an attack (a fitted UAP's perturbation included)."""
    digest = hashlib.sha1(type(attack).__name__.encode())
    for key, value in sorted(vars(attack).items()):
        digest.update(key.encode())
        if torch.is_tensor(value):
            update_digest(digest, value)
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()[:10]


@dataclass
class Table:
    """Tidy results: one row per (model, attack, eps), plus per-model summaries."""

    rows: list[dict] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)

    def __add__(self, other: "Table") -> "Table":
        return Table(self.rows + other.rows, self.summaries + other.summaries)

    def to_dataframe(self, summary: bool = False):
        import pandas as pd

        return pd.DataFrame(self.summaries if summary else self.rows)

    def to_markdown(self, summary: bool = True) -> str:
        records = self.summaries if summary else self.rows
        if not records:
            return ""
        keys = list(dict.fromkeys(k for r in records for k in r))
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for record in records:
            lines.append("| " + " | ".join(_format(record.get(k)) for k in keys) + " |")
        return "\n".join(lines)

    def to_csv(self, summary: bool = False) -> str:
        records = self.summaries if summary else self.rows
        keys = list(dict.fromkeys(k for r in records for k in r))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(keys)
        writer.writerows([_format(r.get(k), csv=True) for k in keys] for r in records)
        return buffer.getvalue()

    def to_json(self) -> str:
        return json.dumps({"rows": self.rows, "summaries": self.summaries}, indent=2, default=float)

    def write(self, path: str | os.PathLike) -> None:
        """Write by extension: .csv (rows), .md (summary table), .json (both); atomically."""
        suffix = os.path.splitext(os.fspath(path))[1].lower()
        writers = {".csv": self.to_csv, ".md": self.to_markdown, ".json": self.to_json}
        if suffix not in writers:
            raise ValueError(f"cannot write {suffix!r}: use .csv, .md or .json")
        atomic_write_text(writers[suffix](), path)


def _format(value, csv: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "" if csv else "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


class _Cache:
    """Per-image attacked scores on disk, saved after every batch; keyed by the model's
    name and weights, the attack's name and settings, and checked against the images."""

    def __init__(self, folder: str | os.PathLike | None, model_name: str, model: nn.Module, fingerprint: str):
        self.folder = None if folder is None else os.path.join(os.fspath(folder), model_name, model_digest(model))
        self.fingerprint = fingerprint

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, key.replace("/", "_") + ".pt")

    def load(self, key: str, count: int) -> torch.Tensor:
        if self.folder is not None and os.path.isfile(self._path(key)):
            data = torch.load(self._path(key), map_location="cpu", weights_only=True)
            if data["fingerprint"] != self.fingerprint:
                raise ValueError(
                    f"cache {self._path(key)!r} was computed on other images; use another cache folder or delete it"
                )
            return data["scores"]
        return torch.full((count,), float("nan"))

    def store(self, key: str, values: torch.Tensor) -> None:
        if self.folder is not None:
            atomic_save({"fingerprint": self.fingerprint, "scores": values}, self._path(key))


def _attacked_scores(
    model: nn.Module, attack: Attack, images: torch.Tensor, direction: str, batch_size: int,
    cache: _Cache, key: str, bar,
) -> torch.Tensor:
    values = cache.load(key, images.shape[0])
    if isinstance(attack, UAP) and attack.perturbation is None:
        raise ValueError("fit the UAP first (evaluate does it on train_images or the evaluated images)")
    score = score_fn(model)
    for start in range(0, images.shape[0], batch_size):
        stop = min(start + batch_size, images.shape[0])
        if not torch.isnan(values[start:stop]).any():
            bar.update(stop - start)
            continue
        adversarial = attack(model, images[start:stop], direction=direction)
        with torch.no_grad(), measuring(model):
            values[start:stop] = score(as_model_input(adversarial, model)).float().cpu()
        cache.store(key, values)
        bar.update(stop - start)
    if not torch.isfinite(values).all():
        raise ValueError(f"the model returned NaN or inf under attack {key}")
    return values


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    mos: Sequence[float] | torch.Tensor | None = None,
    attacks: AttackSpec | Iterable[AttackSpec] = DEFAULT_ATTACKS,
    *,
    eps_grid: Sequence[float] = EPS_GRID,
    score_range: tuple[float, float] | None = None,
    train_images: torch.Tensor | None = None,
    direction: str | Sequence[str] = "up",
    attack_subset: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 8,
    cache: str | os.PathLike | None = None,
    name: str = "model",
    progress: bool = True,
    seed: int | None = 0,
) -> Table:
    """Clean accuracy and attack robustness of ``model`` on ``images`` (N, 3, H, W) in [0, 1].

    SROCC, PLCC and KROCC use every image; the attacks run on ``attack_subset`` (indices
    into ``images``) when given, since attacks cost far more than scoring.

    Returns a :class:`Table`: ``rows`` (one per attack and eps, with AbsGain and
    R-Score; the clean row has the correlations) and ``summaries`` (one per model:
    SROCC, PLCC, KROCC, then per attack AbsGain / R-Score, or their AUCs over eps
    for PGD). Scores are normalised with ``score_range`` if given, else the range the
    model carries (``model.score_range``), else the range of its scores on
    ``train_images``, else on ``images``; the summary says which. ``train_images`` also
    train the UAP.

    ``direction``: ``"up"`` (raise the score), ``"down"`` (lower it), ``"both"`` or a list
    of those. A lowering attack's rows are named ``"<attack> down"`` and keep the measured,
    negative AbsGain; its summary gives the size (``"<attack> down abs_gain_auc"`` > 0 when
    the attack lowered the score).

    ``seed``: the random attacks named by string draw from it, so the same call gives the
    same table (and the cache keys include it); None draws from the global RNG.
    """
    check_images(images)
    directions = _directions(direction)
    clean = scores(model, images, batch_size)
    source = "given"
    if score_range is None and model_score_range(model) is not None:
        score_range, source = model_score_range(model), "model"
    if score_range is None:
        reference = scores(model, train_images, batch_size) if train_images is not None else clean
        score_range = metrics.score_range(reference)
        source = "train images" if train_images is not None else "evaluated images"
    lo, hi = score_range

    summary: dict = {"model": name, "n": int(images.shape[0]), "score_range": f"{lo:.4g}..{hi:.4g} ({source})"}
    clean_row = {k: None for k in COLUMNS} | {"model": name, "attack": "clean", "n": int(images.shape[0])}
    clean_row["mean_score"] = float(clean.mean())
    if mos is not None:
        target = torch.as_tensor(mos, dtype=torch.float64).reshape(-1)
        if target.numel() != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {target.numel()} MOS values")
        for metric in ("srocc", "plcc", "krocc"):
            clean_row[metric] = summary[metric] = getattr(metrics, metric)(clean, target)
    rows = [clean_row]

    if attack_subset is not None:
        picked = torch.as_tensor(attack_subset, dtype=torch.long).reshape(-1)
        if picked.numel() == 0 or picked.min() < 0 or picked.max() >= images.shape[0]:
            raise ValueError(f"attack_subset must hold indices in [0, {images.shape[0] - 1}], got {picked.tolist()[:10]}")
        images, clean = images[picked], clean[picked]
        target = target[picked] if mos is not None else None
        summary["attack_n"] = int(picked.numel())
    attacks = attack_list(attacks)
    if len(directions) > 1 and any(isinstance(a, UAP) and a.perturbation is None for a in attacks):
        raise ValueError(
            "an unfitted UAP instance would be fitted for one direction only: pass 'uap' (fitted per direction) or a fitted UAP"
        )
    # attack names build fresh attacks per direction (a UAP is fitted for each)
    runs = {direction: resolve_attacks(attacks, eps_grid, seed) for direction in directions}
    fingerprint = _fingerprint(images)
    store = _Cache(cache, name, model, fingerprint)
    total = sum(map(len, runs.values())) * images.shape[0]
    with tqdm(total=total, desc=f"attacking {name}", disable=not progress, unit="img") as bar:
        for direction in directions:
            for attack_name, eps, attack in runs[direction]:
                if isinstance(attack, UAP) and attack.perturbation is None:
                    attack.fit(model, train_images if train_images is not None else images, direction, batch_size)
                key = attack_name if eps is None else f"{attack_name}-eps{eps * 255:g}"
                key = f"{key}-{direction}-{attack_digest(attack)}"
                attacked = _attacked_scores(model, attack, images, direction, batch_size, store, key, bar)
                row = {k: None for k in COLUMNS} | {
                    "model": name,
                    "attack": attack_name if direction == "up" else f"{attack_name} down",
                    "eps": None if eps is None else round(eps * 255, 6),
                    "n": int(images.shape[0]),
                    "mean_score": float(attacked.mean()),
                    "abs_gain": metrics.abs_gain(clean, attacked, lo, hi),
                    "r_score": metrics.r_score(clean, attacked, lo, hi),
                }
                if mos is not None:
                    for metric in ("srocc", "plcc", "krocc"):
                        row[metric] = getattr(metrics, metric)(attacked, target)
                rows.append(row)

    for attack_name in dict.fromkeys(r["attack"] for r in rows[1:]):
        group = [r for r in rows if r["attack"] == attack_name]
        size = -1.0 if attack_name.endswith(" down") else 1.0  # a lowering attack's gain, as a size
        if len(group) > 1 and all(r["eps"] is not None for r in group):
            eps_values = [r["eps"] for r in group]
            summary[f"{attack_name} abs_gain_auc"] = size * metrics.auc(eps_values, [r["abs_gain"] for r in group])
            summary[f"{attack_name} r_score_auc"] = metrics.auc(eps_values, [r["r_score"] for r in group])
        else:
            summary[f"{attack_name} abs_gain"] = size * group[0]["abs_gain"]
            summary[f"{attack_name} r_score"] = group[0]["r_score"]
    return Table(rows=rows, summaries=[summary])


def _directions(direction: str | Sequence[str]) -> list[str]:
    chosen = ["up", "down"] if direction == "both" else [direction] if isinstance(direction, str) else list(direction)
    if not chosen or any(d not in ("up", "down") for d in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"direction must be 'up', 'down', 'both' or a list of 'up' and 'down', got {direction!r}")
    return chosen


def compare(
    models: Mapping[str, nn.Module],
    images: torch.Tensor,
    mos: Sequence[float] | torch.Tensor | None = None,
    attacks: AttackSpec | Iterable[AttackSpec] = DEFAULT_ATTACKS,
    *,
    score_range: tuple[float, float] | None = None,
    score_ranges: Mapping[str, tuple[float, float]] | None = None,
    **kwargs,
) -> Table:
    """:func:`evaluate` every model on the same images and attacks; one table side by side.

    ``score_ranges`` gives each model its own normalisation range (by name);
    ``score_range`` one range for every model not named there. Attack
    names build fresh attacks per model; an :class:`Attack` instance is used as
    given (a fitted UAP is applied unchanged, i.e. as a transfer attack).
    """
    attacks = attack_list(attacks)
    table = Table()
    for name, model in models.items():
        rng = (score_ranges or {}).get(name, score_range)
        table = table + evaluate(model, images, mos, attacks, score_range=rng, name=name, **kwargs)
    return table
