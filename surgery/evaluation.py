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
import glob
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
from .attacks import APGD, EPS_GRID, MSU_EPS_GRID, PGD, UAP, Attack, PaperPGD, Square, StAdv
from . import distributed
from .batches import ImageData, ImageStream
from .scoring import as_model_input, model_device, model_score_range, score_fn
from .modes import measuring, memory_layout
from .files import atomic_save, atomic_write_text
from .fingerprint import image_fingerprints, model_fingerprint, update_digest

BATCH_SIZE = 8  # evaluate's default: cache keys name another batch size, not this one

__all__ = ["evaluate", "compare", "Table", "AttackSpec", "DEFAULT_ATTACKS", "MSU_PROTOCOL", "resolve_attacks"]

AttackSpec = Union[str, Attack]
DEFAULT_ATTACKS: tuple[str, ...] = ("pgd-1", "pgd-8", "uap", "stadv")
# evaluate's keywords for the MSU benchmarks' setting: their l_inf budgets and gains normalised by
# the range of the clean scores of the evaluated images (docs/protocol.md says what else differs)
MSU_PROTOCOL: dict = {"eps_grid": MSU_EPS_GRID, "score_range": "evaluated"}
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
    """Per-image attacked scores on disk, saved after every batch; keyed by the model's name and
    weights, the attack's name and settings, the batch size and the kind of device, and matched image by image (each score is
    stored with a fingerprint of the image it was made on). Under a process group each rank
    writes its own file and every file of a key is read, so a run resumes with any number of
    processes."""

    def __init__(self, folder: str | os.PathLike | None, model_name: str, model: nn.Module, count: int):
        self.folder = None if folder is None else os.path.join(os.fspath(folder), model_name, model_digest(model))
        self.count = count
        self.entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _files(self, key: str) -> list[str]:
        stem = os.path.join(self.folder, key.replace("/", "_"))
        return [stem + ".pt"] + sorted(glob.glob(glob.escape(stem) + ".rank*.pt"))

    def _own_file(self, key: str) -> str:
        suffix = f".rank{distributed.rank()}.pt" if distributed.world_size() > 1 else ".pt"
        return os.path.join(self.folder, key.replace("/", "_") + suffix)

    def entry(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, image fingerprints) of every attacked image; NaN and 0 where none is stored."""
        if key in self.entries:
            return self.entries[key]
        values, prints = torch.full((self.count,), float("nan")), torch.zeros(self.count, dtype=torch.int64)
        for path in self._files(key) if self.folder is not None else []:
            if not os.path.isfile(path):
                continue
            data = torch.load(path, map_location="cpu", weights_only=True)
            if "fingerprints" not in data or data["scores"].numel() != self.count:
                raise ValueError(
                    f"cache {path!r} was computed on other images (or by an older surgery); use another cache folder or delete it"
                )
            stored = data["fingerprints"] != 0
            values[stored], prints[stored] = data["scores"][stored], data["fingerprints"][stored]
        self.entries[key] = values, prints
        return values, prints

    def cached(self, key: str, positions: torch.Tensor, fingerprints: torch.Tensor) -> bool:
        """Whether every image of a batch has a stored score; a score stored for another image is refused."""
        _, prints = self.entry(key)
        stored = prints[positions]
        if ((stored != 0) & (stored != fingerprints)).any():
            where = self.folder if self.folder is not None else "the cache"
            raise ValueError(f"cache {where!r} holds scores of other images for {key}; use another cache folder or delete it")
        return bool((stored == fingerprints).all())

    def store(self, key: str, positions: torch.Tensor, fingerprints: torch.Tensor, scores: torch.Tensor) -> None:
        values, prints = self.entry(key)
        values[positions], prints[positions] = scores, fingerprints
        if self.folder is not None:
            atomic_save({"fingerprints": prints, "scores": values}, self._own_file(key))


def clean_pass(model: nn.Module, stream: ImageStream) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's clean score and the score its data carries (NaN for none), this rank's
    batches scored and the rest gathered from the other ranks (what evaluate and the blend's
    calibration score images with)."""
    values, carried, mine = (torch.zeros(len(stream), dtype=torch.float64) for _ in range(3))
    score = score_fn(model)
    with torch.no_grad(), measuring(model):
        for batch in stream.batches():
            values[batch.indices] = score(as_model_input(batch.images, model)).double().cpu()
            carried[batch.indices], mine[batch.indices] = batch.scores.double(), 1.0
    values, carried = (distributed.sum_over_ranks(t * mine) for t in (values, carried))  # NaN * 1 stays NaN
    if not torch.isfinite(values).all():
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        raise ValueError(f"the model returned NaN or inf for {stream.what}(s) {bad[:10]}: check the model and its weights")
    return values.float(), carried


def _data_mos(mos, carried: torch.Tensor, count: int) -> torch.Tensor | None:
    """The MOS given, else the scores the dataset's items carry, else None."""
    if mos is not None:
        if carried.isfinite().any():
            raise ValueError("the dataset's items carry their own scores and mos= was given too: pass one of them")
        target = torch.as_tensor(mos, dtype=torch.float64).reshape(-1)
        if target.numel() != count:
            raise ValueError(f"{count} images but {target.numel()} MOS values")
        return target
    if carried.isnan().all():
        return None
    if carried.isnan().any():
        missing = carried.isnan().nonzero().flatten().tolist()
        raise ValueError(f"item(s) {missing[:10]} of the dataset have no score while others have: give every image its MOS or none")
    return carried


def _attack_pass(model, runs, stream: ImageStream, picked: torch.Tensor, store: _Cache, bar) -> dict[str, torch.Tensor]:
    """Attacked scores of the images at ``picked`` for every run, this rank's batches attacked
    (each batch loaded once for every run) and the rest gathered from the other ranks."""
    score = score_fn(model)
    mine = torch.zeros(picked.numel(), dtype=torch.bool)
    for batch in stream.batches(picked):
        mine[batch.positions] = True
        prints = image_fingerprints(batch.images)
        for direction, key, attack in runs:
            if not store.cached(key, batch.positions, prints):
                adversarial = attack(model, batch.images, direction=direction)
                with torch.no_grad(), measuring(model):
                    attacked = score(as_model_input(adversarial, model)).float().cpu()
                store.store(key, batch.positions, prints, attacked)
            bar.update(batch.positions.numel())
    results = {}
    for _, key, _ in runs:
        values = torch.where(mine, store.entry(key)[0], 0.0).double()
        results[key] = distributed.sum_over_ranks(values).float()
        if not torch.isfinite(results[key]).all():
            raise ValueError(f"the model returned NaN or inf under attack {key}")
    return results


def _measured_range(model, score_range, train_images, clean, batch_size, num_workers) -> tuple[tuple[float, float], str]:
    if isinstance(score_range, str):
        if score_range != "evaluated":
            raise ValueError(f"score_range must be (low, high), 'evaluated' or None, got {score_range!r}")
        return metrics.score_range(clean), "evaluated images"
    if score_range is not None:
        low, high = (float(v) for v in score_range)
        return (low, high), "given"
    if model_score_range(model) is not None:
        return model_score_range(model), "model"
    if train_images is not None:
        reference, _ = clean_pass(model, ImageStream(train_images, batch_size, num_workers, "train image"))
        return metrics.score_range(reference), "train images"
    return metrics.score_range(clean), "evaluated images"


def _fit_uap(attack: UAP, model, train_images, stream: ImageStream, picked, direction, batch_size, num_workers) -> None:
    """Fit an unfitted UAP on ``train_images`` or the attacked images; rank 0's perturbation is
    every rank's (each fits the same, so a GPU's nondeterminism cannot split them)."""
    if train_images is not None:
        stream, picked = ImageStream(train_images, batch_size, num_workers, "train image"), None
    attack.fit(model, stream.images(picked), direction, batch_size)
    attack.perturbation = distributed.broadcast_from_first(attack.perturbation)


@distributed.joins_torchrun(lambda model, *args, **kwargs: model_device(model))
def evaluate(
    model: nn.Module,
    images: ImageData,
    mos: Sequence[float] | torch.Tensor | None = None,
    attacks: AttackSpec | Iterable[AttackSpec] = DEFAULT_ATTACKS,
    *,
    eps_grid: Sequence[float] = EPS_GRID,
    score_range: tuple[float, float] | str | None = None,
    train_images: ImageData | None = None,
    direction: str | Sequence[str] = "up",
    attack_subset: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = BATCH_SIZE,
    num_workers: int = 0,
    cache: str | os.PathLike | None = None,
    name: str = "model",
    progress: bool = True,
    seed: int | None = 0,
    channels_last: bool = False,
) -> Table:
    """Clean accuracy and attack robustness of ``model`` on ``images`` in [0, 1].

    ``images``: an (N, 3, H, W) tensor, a map-style Dataset of images or ``(image, score)``
    pairs (the scores are the MOS), or a DataLoader of one; images are read batch by batch,
    so memory stays flat in N, and may differ in size (a batch holds one size; see
    :mod:`surgery.batches`). SROCC, PLCC and KROCC use every image; the attacks run on
    ``attack_subset`` (indices into ``images``) when given, since attacks cost far more than
    scoring.

    Returns a :class:`Table`: ``rows`` (one per attack and eps, with AbsGain, R-Score and,
    with MOS, the correlations of the attacked images' scores with their MOS: robust SROCC /
    PLCC / KROCC; the clean row has the clean correlations, on every image) and ``summaries``
    (one per model: SROCC, PLCC, KROCC, then per attack AbsGain / R-Score, or their AUCs over
    eps, and the robust SROCC / PLCC at the largest eps). Scores are normalised with
    ``score_range`` if given (``"evaluated"``: the range of the clean scores of the evaluated
    images, as the MSU benchmark does), else the range the model carries
    (``model.score_range``), else the range of its scores on ``train_images``, else on
    ``images``; the summary says which. ``train_images`` (a tensor, Dataset or DataLoader)
    also train the UAP.

    ``direction``: ``"up"`` (raise the score), ``"down"`` (lower it), ``"both"`` or a list
    of those. A lowering attack's rows are named ``"<attack> down"`` and keep the measured,
    negative AbsGain; its summary gives the size (``"<attack> down abs_gain_auc"`` > 0 when
    the attack lowered the score).

    ``seed``: the random attacks named by string draw from it, so the same call gives the
    same table (and the cache keys include it); None draws from the global RNG.

    ``channels_last=True`` runs the model's convolutions in the channels-last memory layout
    (its 4-D weights converted for the call and given back after): 1.18x faster on the
    default model on CPU (``benchmarks/evaluation.py``), gains equal to float rounding. Off
    by default: a model that calls ``.view`` on its feature maps fails in that layout.

    Under ``torchrun`` (or with a process group initialised) every rank scores and attacks
    its share of the batches and every rank returns the whole table, the same as one
    process would (each rank's model on its own device, e.g. ``cuda:LOCAL_RANK``).
    """
    directions = _directions(direction)
    distributed.check_same_on_every_rank(
        lambda: model_digest(model), "the model", "load the same weights in every process (seed a random initialisation)"
    )
    stream = ImageStream(images, batch_size, num_workers)
    count = len(stream)
    distributed.check_same_on_every_rank(lambda: str(count), "the number of images", "give every process the same images")
    with memory_layout(model, channels_last):
        clean, carried = clean_pass(model, stream)
    target = _data_mos(mos, carried, count)
    (lo, hi), source = _measured_range(model, score_range, train_images, clean, batch_size, num_workers)

    summary: dict = {"model": name, "n": count, "score_range": f"{lo:.4g}..{hi:.4g} ({source})"}
    clean_row = {k: None for k in COLUMNS} | {"model": name, "attack": "clean", "n": count}
    clean_row["mean_score"] = float(clean.mean())
    if target is not None:
        for metric in ("srocc", "plcc", "krocc"):
            clean_row[metric] = summary[metric] = getattr(metrics, metric)(clean, target)
    rows = [clean_row]

    picked = torch.arange(count)
    if attack_subset is not None:
        picked = torch.as_tensor(attack_subset, dtype=torch.long).reshape(-1)
        if picked.numel() == 0 or picked.min() < 0 or picked.max() >= count:
            raise ValueError(f"attack_subset must hold indices in [0, {count - 1}], got {picked.tolist()[:10]}")
        summary["attack_n"] = int(picked.numel())
    attacked_clean = clean[picked]
    attacked_target = None if target is None else target[picked]
    attacks = attack_list(attacks)
    if len(directions) > 1 and any(isinstance(a, UAP) and a.perturbation is None for a in attacks):
        raise ValueError(
            "an unfitted UAP instance would be fitted for one direction only: pass 'uap' (fitted per direction) or a fitted UAP"
        )
    # attack names build fresh attacks per direction (a UAP is fitted for each)
    runs = [(direction, *run) for direction in directions for run in resolve_attacks(attacks, eps_grid, seed)]
    setting = cache_setting(stream.batch_size, model_device(model))
    keyed = []
    for direction, attack_name, eps, attack in runs:
        if isinstance(attack, UAP) and attack.perturbation is None:
            _fit_uap(attack, model, train_images, stream, picked, direction, batch_size, num_workers)
        key = attack_name if eps is None else f"{attack_name}-eps{eps * 255:g}"
        keyed.append((direction, f"{key}-{direction}-{attack_digest(attack)}{setting}", attack))
    store = _Cache(cache, name, model, picked.numel())
    total = len(runs) * stream.share(picked)
    show = progress and distributed.rank() == 0
    with tqdm(total=total, desc=f"attacking {name}", disable=not show, unit="img") as bar, memory_layout(model, channels_last):
        attacked_scores = _attack_pass(model, keyed, stream, picked, store, bar)

    for (direction, attack_name, eps, _), (_, key, _) in zip(runs, keyed):
        attacked = attacked_scores[key]
        row = {k: None for k in COLUMNS} | {
            "model": name,
            "attack": attack_name if direction == "up" else f"{attack_name} down",
            "eps": None if eps is None else round(eps * 255, 6),
            "n": int(picked.numel()),
            "mean_score": float(attacked.mean()),
            "abs_gain": metrics.abs_gain(attacked_clean, attacked, lo, hi),
            "r_score": metrics.r_score(attacked_clean, attacked, lo, hi),
        }
        if attacked_target is not None:
            for metric in ("srocc", "plcc", "krocc"):
                row[metric] = getattr(metrics, metric)(attacked, attacked_target)
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
        if attacked_target is not None:
            strongest = max(group, key=lambda r: r["eps"] or 0.0)
            at = "" if strongest["eps"] is None else f"@{strongest['eps']:g}"
            summary[f"{attack_name} srocc{at}"] = strongest["srocc"]
            summary[f"{attack_name} plcc{at}"] = strongest["plcc"]
    return Table(rows=rows, summaries=[summary])


def cache_setting(batch_size: int, device: torch.device) -> str:
    """What a cache key of attacked scores adds for the batch size and the device: random starts
    are drawn per batch and a GPU's arithmetic is not the CPU's, so a score attacked under other
    ones is not the score this call computes. Empty for evaluate's defaults (8, CPU), the keys of
    older caches."""
    return ("" if batch_size == BATCH_SIZE else f"-b{batch_size}") + ("" if device.type == "cpu" else f"-{device.type}")


def _directions(direction: str | Sequence[str]) -> list[str]:
    chosen = ["up", "down"] if direction == "both" else [direction] if isinstance(direction, str) else list(direction)
    if not chosen or any(d not in ("up", "down") for d in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"direction must be 'up', 'down', 'both' or a list of 'up' and 'down', got {direction!r}")
    return chosen


@distributed.joins_torchrun(lambda models, *args, **kwargs: model_device(next(iter(models.values()))))
def compare(
    models: Mapping[str, nn.Module],
    images: ImageData,
    mos: Sequence[float] | torch.Tensor | None = None,
    attacks: AttackSpec | Iterable[AttackSpec] = DEFAULT_ATTACKS,
    *,
    score_range: tuple[float, float] | str | None = None,
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
