"""Hardening recipes, one call each: ``surgery.robustify(model, train, val, recipe=...)``.

- ``"paper"``: the method of Meleshin et al. ("Robustness as Architecture"): a RobustBlock
  before the last convolutional block of each branch, 10% l2 pruning, a plain fine-tune.
- ``"robust"``: consistency training (TRADES for a regression score,
  :class:`~surgery.defenses.ConsistencyTraining`): the clean task loss plus a penalty on
  how far a few projected steps inside an eps ball can move the score; then the fine-tune is
  blended back toward the model (:func:`~surgery.blend`, WiSE-FT): with validation data, the
  most robust blend that keeps 99% of its validation SROCC
  (:func:`~surgery.calibration.calibrate_blend`), without, 40% of the weight change. No block.
- ``"robust-strong"``: the same fine-tune, kept whole: more robust, less accurate.

The README's comparison (``benchmarks/paper_tables.py``) measures them, with a fine-tune-only
control, NT and AT, under the paper's attacks and APGD in both directions; the choice of
``"robust"`` as the default comes from that table: the blend keeps more SROCC than a
weaker penalty for the same robustness.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import metrics
from .batches import ImageStream
from .blending import blend, counterparts
from .blockmap import ModelMap, locate
from .calibration import calibrate_blend, check_target
from .defenses import ConsistencyTraining, Defense
from .evaluation import clean_pass
from .hardening import harden
from .modes import restored_on_error
from .scoring import model_device, model_dtype
from .training import DataSpec, FinetuneResult, as_dataset, finetune, known_targets, parameter_names

__all__ = ["Recipe", "RECIPES", "robustify"]


@dataclass(frozen=True)
class Recipe:
    """A recipe is its whole configuration, and :func:`robustify` runs exactly it unless told
    otherwise: the surgery (``harden`` keywords; None: no block, no pruning), the training
    defence (None: the task loss alone; called with the spread of the training scores, their
    standard deviation), the fine-tune (``loss``, ``epochs``, AdamW's ``lr`` and
    ``weight_decay``, its learning-rate ``schedule``, ``batch_size``, ``grad_clip``, which
    parameters train: those of the last ``train_blocks`` conv blocks :func:`surgery.locate`
    finds and of every layer after them, the head; None: every parameter; and which epoch it
    returns, ``select``: the best by validation SROCC or the last), the fraction of the
    fine-tune's weight change kept (:func:`~surgery.blend`; None: all of it) and, with
    validation data, the share of the original's validation SROCC the blend is chosen to keep
    instead (``target``; None: the fixed ``blend``)."""

    name: str
    description: str
    harden: dict[str, Any] | None = None
    defense: Callable[[float], Defense] | None = None
    blend: float | None = None
    loss: str = "norm-in-norm"
    epochs: int = 5
    lr: float = 1e-4
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    batch_size: int = 8
    grad_clip: float | None = 1.0
    train_blocks: int | None = None
    select: str = "best"
    target: float | None = None

    def finetune_options(self) -> dict[str, Any]:
        """The :func:`surgery.finetune` keywords the recipe sets."""
        return {"loss": self.loss, "epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                "schedule": self.schedule, "batch_size": self.batch_size, "grad_clip": self.grad_clip, "select": self.select}

    def record(self) -> dict[str, Any]:
        """The whole configuration as plain values, as a weights file records what made it (the
        defence by its class and settings, built for a unit score spread)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "defense"}
        if self.defense is None:
            return {**fields, "defense": None}
        defense = self.defense(1.0)
        settings = {k: v for k, v in vars(defense).items() if k != "scale"}
        return {**fields, "defense": {"class": type(defense).__name__, **settings}}

    def training_digest(self) -> str:
        """Eight hex digits of what the fine-tune is (the record without the name, description,
        blend, its target and the epoch returned): a checkpoint folder named by it is never offered to a
        recipe that trains otherwise, and ``"robust"`` / ``"robust-strong"``, which differ only
        in the blend and its target, share it."""
        trains = {k: v for k, v in self.record().items() if k not in ("name", "description", "blend", "select", "target")}
        return hashlib.sha1(json.dumps(trains, sort_keys=True, default=repr).encode()).hexdigest()[:8]


# the configuration measured on the default model (docs/results.md): MSE, 4 epochs, AdamW lr 1e-4
# (weight decay 1e-4) on a cosine schedule, batch 8, gradients clipped at norm 1, its stages 4-6
# and head trained (the last 4 blocks locate finds), the last epoch returned (on validation, three
# seeds: more robust at the same SROCC once blended than 2 epochs or the best epoch by SROCC, which
# is a robust fine-tune's least robust)
MEASURED = {"loss": "mse", "epochs": 4, "lr": 1e-4, "weight_decay": 1e-4, "schedule": "cosine", "batch_size": 8,
            "grad_clip": 1.0, "train_blocks": 4, "select": "last"}


def _consistency(name: str, beta: float, blend: float | None = None, target: float | None = None, note: str = "") -> Recipe:
    """Consistency training as measured on the default model: eps 4/255, 2 steps on half of each
    batch, ``beta`` in units of the training scores' variance, then the blend that keeps
    ``target`` of the validation SROCC (without validation data: ``blend`` of the fine-tune's
    change kept); no block. (2 steps on half at beta 0.04 match 3 steps on every image at beta
    0.02 over three seeds, at 0.38x the epoch time: docs/results.md, robust training.)"""
    kept = "" if blend is None else f", then {blend:.0%} of the fine-tune's weight change kept (WiSE-FT)"
    if target is not None:
        kept = (f", then the most robust blend back (WiSE-FT) that keeps {target:.0%} of the validation SROCC "
                f"(without validation data: {blend:.0%} of the weight change kept)")
    return Recipe(
        name,
        f"consistency training (TRADES for scores): eps 4/255, 2 steps on half of each batch, beta {beta:g}{kept}; "
        f"no block; MSE, {MEASURED['epochs']} epochs (the last returned), lr {MEASURED['lr']:g} ({MEASURED['schedule']}), the last "
        f"{MEASURED['train_blocks']} conv blocks and the head trained{note}",
        defense=lambda spread: ConsistencyTraining(eps=4 / 255, steps=2, beta=beta, scale=spread, fraction=0.5),
        blend=blend,
        target=target,
        **MEASURED,
    )


RECIPES: dict[str, Recipe] = {
    # keep 0.4: what the calibration chose among uniform blends of this fine-tune on the default
    # model's validation data for two seeds of three (0.3 for the third)
    "robust": _consistency("robust", 0.04, blend=0.4, target=0.99),
    "robust-strong": _consistency("robust-strong", 0.04, note=" (more robust, less accurate)"),
    "paper": Recipe(
        "paper",
        "Meleshin et al.: RobustBlock (Cayley) before the last conv block, 10% l2 pruning, plain fine-tune "
        "(Norm-in-Norm, 5 epochs, every parameter)",
        harden={"position": "auto", "ortho": "cayley", "prune": "l2", "amount": 0.10},
    ),
}


def _score_spread(train: DataSpec) -> float:
    """The standard deviation of the training scores (1.0 when they cannot be read up front)."""
    targets = known_targets(as_dataset(train, "train"))
    if targets is not None and not torch.isfinite(targets).all():
        bad = (~torch.isfinite(targets)).nonzero().flatten().tolist()
        raise ValueError(f"training image(s) {bad[:10]} have NaN or inf scores: fix or drop those labels")
    if targets is None or targets.numel() < 2 or not float(targets.std()) > 0:
        warnings.warn(
            "robustify cannot read the spread of the training scores up front (a Dataset without .targets, or "
            "constant scores): the consistency penalty is measured in raw score units; pass "
            "defense=ConsistencyTraining(scale=<their standard deviation>) to fix its scale",
            stacklevel=3,
        )
        return 1.0
    return float(targets.std())


def _same_parameters(hardened: nn.Module, original_names: dict, trained: list[str]) -> list[nn.Parameter]:
    """The hardened copy's tensors that stand for the original's ``trained`` ones (by name, across
    the copy, a splice and pruning, which replace the tensor objects), and the tensors a spliced
    block adds: the original has none to name, and an untrained block keeps its initial map."""
    own = dict(hardened.named_parameters())
    original_of = counterparts(hardened, dict.fromkeys(hardened.state_dict()), original_names)
    copy_of = {source: key for key, source in original_of.items()}
    added = [tensor for key, tensor in own.items() if key not in original_of]
    return [own[copy_of[name]] for name in trained] + added


def _locate_on(model: nn.Module, train: DataSpec) -> tuple[ModelMap | None, str | None]:
    """``model``'s conv blocks found on a training image, or None and why they cannot be."""
    image = as_dataset(train, "train")[0][0]
    try:
        return locate(model, example_input=torch.as_tensor(image)[None].to(model_device(model), model_dtype(model))), None
    except ValueError as err:
        return None, str(err)


def _trailing_parameters(blocks: ModelMap | None, why: str | None, count: int) -> list[str] | None:
    """The names of the parameters of the last ``count`` conv blocks and of every layer after
    them (all the blocks when there are fewer); None, with a warning, for a model without conv
    blocks (every parameter trains)."""
    if blocks is None:
        warnings.warn(
            f"robustify: the recipe trains the last {count} conv blocks and what follows them, but {why}; every "
            "parameter trains instead (pass parameters= to choose)",
            stacklevel=3,
        )
        return None
    return blocks.trailing_parameters(min(count, len(blocks.blocks)))


def robustify(
    model: nn.Module,
    train: DataSpec,
    val: DataSpec | None = None,
    recipe: str = "robust",
    *,
    target: float | None | str = "recipe",
    inplace: bool = False,
    harden_options: dict[str, Any] | None = None,
    **finetune_options: Any,
) -> tuple[nn.Module, FinetuneResult]:
    """Harden ``model`` with a recipe and fine-tune it: ``(hardened model, fine-tune history)``.

    ``recipe``: a name in :data:`RECIPES` (``"robust"``, ``"robust-strong"``, ``"paper"``); its
    whole configuration runs (:class:`Recipe`: the robust recipes are the configuration
    measured on the default model). ``harden_options`` are added to the recipe's ``harden``
    keywords (e.g. ``input_size``, ``calib``; a recipe without a block refuses them);
    ``finetune_options`` go to :func:`surgery.finetune` (``checkpoint_dir``, ``seed``, ...) and
    replace the recipe's settings they name (``epochs``, ``lr``, ``weight_decay``, ``schedule``,
    ``loss``, ``batch_size``, ``grad_clip``, ``select``, ``defense``); ``parameters=`` names the
    tensors of ``model`` to train instead of the recipe's rule, and the copy's counterparts are
    trained (with a recipe that splices a block, the block's own tensors too). The model is
    copied unless ``inplace``. A recipe with a ``blend`` moves the fine-tuned weights back
    toward the model as it came in after the fine-tune; the history and checkpoints are of the
    model before the blend. ``target``: with ``val``, the blend is the most robust one that
    keeps this share of the original's validation SROCC (:func:`surgery.calibration.calibrate_blend`, the
    report in ``history.calibration``; with a ``checkpoint_dir`` its measurements are kept
    there too, so a rerun, or one with another target, measures nothing again); ``"recipe"``:
    the recipe's (0.99 for ``"robust"``; without ``val``, its fixed blend, with a warning);
    None: the recipe's fixed blend. A model
    that carries a ``score_range`` gets the range of its own scores on the
    training images: the range :func:`surgery.evaluate` measures score changes in.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; available: {sorted(RECIPES)}")
    chosen = RECIPES[recipe]
    if isinstance(target, str):
        if target != "recipe":
            raise ValueError(f"target must be a share of the validation SROCC to keep (e.g. 0.99), None or 'recipe', got {target!r}")
        target = chosen.target if val is not None else None
    if target is not None:
        check_target(target)  # before anything trains
    if target is not None and (val is None or chosen.defense is None):
        raise ValueError(
            "target= chooses the blend on validation data: pass val=(images, scores) held out from train"
            if val is None else f"recipe {recipe!r} has no robust fine-tune to blend: target= needs 'robust' or 'robust-strong'"
        )
    if val is None and chosen.blend is not None:
        warnings.warn(
            f"robustify: no val, so the blend keeps the recipe's {chosen.blend:g} of the fine-tune (chosen on the default "
            "model's validation data), not a keep calibrated on yours"
            + (", and the last epoch is kept, not the best" if finetune_options.get("select", chosen.select) == "best" else "")
            + ": pass val",
            stacklevel=2,
        )
    given = finetune_options.get("parameters")
    # the blocks give the trained parts and, for the calibration, the head it may keep whole
    located = (given is None and chosen.train_blocks is not None) or target is not None
    blocks, why = _locate_on(model, train) if located else (None, None)
    if given is not None:
        trained = parameter_names(model, list(given), "the model passed to robustify")
    elif chosen.train_blocks is not None:
        trained = _trailing_parameters(blocks, why, chosen.train_blocks)
    else:
        trained = None
    original_names = dict.fromkeys(model.state_dict())
    # an inplace run that fails gives the model back as it came (a splice and pruning change its structure)
    with restored_on_error(model) if inplace else contextlib.nullcontext():
        # what the blend goes back toward: the model as it came in
        blends = chosen.blend is not None or target is not None
        original = copy.deepcopy(model) if blends and inplace else model
        if chosen.harden is None:
            if harden_options:
                raise ValueError(f"recipe {recipe!r} adds no block: harden_options {sorted(harden_options)} have no effect")
            hardened = model if inplace else copy.deepcopy(model)
        else:
            # the block starts from the run's seed, so a rerun with the same checkpoint_dir resumes it
            with torch.random.fork_rng():
                torch.manual_seed(finetune_options.get("seed", 0))
                hardened = harden(model, **{**chosen.harden, **(harden_options or {}), "inplace": inplace})
        options = {**chosen.finetune_options(), **finetune_options}
        if trained is not None:
            options["parameters"] = _same_parameters(hardened, original_names, trained)
        if chosen.defense is not None and "defense" not in options:
            options["defense"] = chosen.defense(_score_spread(train))
        result = finetune(hardened, train, val, **options)
        if target is not None:
            progress = options.get("progress", True)  # finetune's default
            result.calibration = calibrate_blend(
                original, hardened, val, target, batch_size=options["batch_size"], seed=options.get("seed", 0),
                head=blocks.pooled_head() if blocks is not None else (), cache_dir=options.get("checkpoint_dir"),
                progress=progress,
            )
            blend(hardened, original, result.calibration.blend_keep)
            if progress:
                tqdm.write(f"robustify, calibrated on validation:\n{result.calibration}")
        elif chosen.blend is not None:
            blend(hardened, original, chosen.blend)
        if getattr(hardened, "score_range", None) is not None:
            # the range every score change is measured in is the model's own: consistency training
            # squashes the scores toward their mean, and in the range it came with that squash
            # would pass for robustness
            hardened.score_range = _own_range(hardened, train, options["batch_size"])
    return hardened, result


def _own_range(model: nn.Module, train: DataSpec, batch_size: int) -> tuple[float, float]:
    """(min, max) of ``model``'s scores on the training images (:func:`surgery.metrics.score_range`)."""
    clean, _ = clean_pass(model, ImageStream(as_dataset(train, "train"), batch_size, what="training image"))
    return metrics.score_range(clean)
