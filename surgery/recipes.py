"""Hardening recipes, one call each: ``surgery.robustify(model, train, val, recipe=...)``.

- ``"paper"``: the method of Meleshin et al. ("Robustness as Architecture"): a RobustBlock
  before the last convolutional block of each branch, 10% l2 pruning, a plain fine-tune.
- ``"robust"``: consistency training (TRADES for a regression score,
  :class:`~surgery.defenses.ConsistencyTraining`): the clean task loss plus a penalty on
  how far a few projected steps inside an eps ball can move the score; then 40% of the
  fine-tune's weight change is kept (:func:`~surgery.blend`, WiSE-FT). No block.
- ``"robust-strong"``: the same fine-tune, kept whole: more robust, less accurate.

The README's comparison (``benchmarks/paper_tables.py``) measures them, with a fine-tune-only
control, NT and AT, under the paper's attacks and APGD in both directions; the choice of
``"robust"`` as the default comes from that table: the blend keeps more SROCC than a
weaker penalty for the same robustness.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .blending import blend, counterparts
from .defenses import ConsistencyTraining, Defense
from .hardening import harden
from .modes import restored_on_error
from .training import DataSpec, FinetuneResult, as_dataset, finetune, known_targets, parameter_names

__all__ = ["Recipe", "RECIPES", "robustify"]


@dataclass(frozen=True)
class Recipe:
    """What a recipe does: ``harden`` keywords (None: no block, no pruning), the training
    defence it fine-tunes with (None: the task loss alone; called with the spread of the
    training scores, their standard deviation), and the fraction of the fine-tune's weight
    change it keeps (:func:`~surgery.blend`; None: all of it)."""

    name: str
    description: str
    harden: dict[str, Any] | None = None
    defense: Callable[[float], Defense] | None = None
    blend: float | None = None


def _consistency(name: str, beta: float, blend: float | None = None, note: str = "") -> Recipe:
    """Consistency training as measured on the default model: eps 4/255, 3 steps, ``beta`` in
    units of the training scores' variance, then ``blend`` of the fine-tune's change kept; no block."""
    kept = "" if blend is None else f", then {blend:.0%} of the fine-tune's weight change kept (WiSE-FT)"
    return Recipe(
        name,
        f"consistency training (TRADES for scores): eps 4/255, 3 steps, beta {beta:g}{kept}; no block{note}",
        defense=lambda spread: ConsistencyTraining(eps=4 / 255, steps=3, beta=beta, scale=spread),
        blend=blend,
    )


RECIPES: dict[str, Recipe] = {
    "robust": _consistency("robust", 0.02, blend=0.4),
    "robust-strong": _consistency("robust-strong", 0.02, note=" (more robust, less accurate)"),
    "paper": Recipe(
        "paper",
        "Meleshin et al.: RobustBlock (Cayley) before the last conv block, 10% l2 pruning, plain fine-tune",
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
    the copy, a splice and pruning, which replace the tensor objects)."""
    own = dict(hardened.named_parameters())
    original_of = counterparts(hardened, dict.fromkeys(hardened.state_dict()), original_names)
    copy_of = {source: key for key, source in original_of.items()}
    return [own[copy_of[name]] for name in trained]


def robustify(
    model: nn.Module,
    train: DataSpec,
    val: DataSpec | None = None,
    recipe: str = "robust",
    *,
    inplace: bool = False,
    harden_options: dict[str, Any] | None = None,
    **finetune_options: Any,
) -> tuple[nn.Module, FinetuneResult]:
    """Harden ``model`` with a recipe and fine-tune it: ``(hardened model, fine-tune history)``.

    ``recipe``: a name in :data:`RECIPES` (``"robust"``, ``"robust-strong"``, ``"paper"``). ``harden_options``
    are added to the recipe's ``harden`` keywords (e.g. ``input_size``, ``calib``; a recipe
    without a block refuses them); ``finetune_options`` go to :func:`surgery.finetune`
    (``epochs``, ``lr``, ``loss``, ``checkpoint_dir``, ...) and may replace the recipe's
    ``defense``; ``parameters=`` may name the tensors of ``model`` to train, and the copy's
    counterparts are trained. The model is copied unless ``inplace``. A recipe with a ``blend`` moves the
    fine-tuned weights back toward the model as it came in after the fine-tune; the history
    and checkpoints are of the model before the blend.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; available: {sorted(RECIPES)}")
    chosen = RECIPES[recipe]
    given = finetune_options.get("parameters")
    trained = None if given is None else parameter_names(model, list(given), "the model passed to robustify")
    original_names = dict.fromkeys(model.state_dict())
    # an inplace run that fails gives the model back as it came (a splice and pruning change its structure)
    with restored_on_error(model) if inplace else contextlib.nullcontext():
        # what the blend goes back toward: the model as it came in
        original = copy.deepcopy(model) if chosen.blend is not None and inplace else model
        if chosen.harden is None:
            if harden_options:
                raise ValueError(f"recipe {recipe!r} adds no block: harden_options {sorted(harden_options)} have no effect")
            hardened = model if inplace else copy.deepcopy(model)
        else:
            # the block starts from the run's seed, so a rerun with the same checkpoint_dir resumes it
            with torch.random.fork_rng():
                torch.manual_seed(finetune_options.get("seed", 0))
                hardened = harden(model, **{**chosen.harden, **(harden_options or {}), "inplace": inplace})
        options = dict(finetune_options)
        if trained is not None:
            options["parameters"] = _same_parameters(hardened, original_names, trained)
        if chosen.defense is not None and "defense" not in options:
            options["defense"] = chosen.defense(_score_spread(train))
        result = finetune(hardened, train, val, **options)
        if chosen.blend is not None:
            blend(hardened, original, chosen.blend)
    return hardened, result
