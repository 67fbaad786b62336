"""Hardening recipes, one call each: ``surgery.robustify(model, train, val, recipe=...)``.

- ``"paper"``: the method of Meleshin et al. ("Robustness as Architecture"): a RobustBlock
  before the last convolutional block of each branch, 10% l2 pruning, a plain fine-tune.
- ``"robust"``: consistency training (TRADES for a regression score,
  :class:`~surgery.defenses.ConsistencyTraining`): the clean task loss plus a penalty on
  how far a few projected steps inside an eps ball can move the score. No block.
- ``"robust-strong"``: the same with a four times larger penalty: more robust, less accurate.

The README's comparison (``benchmarks/paper_tables.py``) measures them, with a fine-tune-only
control, NT and AT, under the paper's attacks and APGD in both directions; the choice of
``"robust"`` as the default (the weakest penalty measured that meets every robustness goal,
so the one that keeps the most SROCC) comes from that table.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from .defenses import ConsistencyTraining, Defense
from .hardening import harden
from .training import DataSpec, FinetuneResult, as_dataset, finetune, known_targets

__all__ = ["Recipe", "RECIPES", "robustify"]


@dataclass(frozen=True)
class Recipe:
    """What a recipe does: ``harden`` keywords (None: no block, no pruning) and the training
    defence it fine-tunes with (None: the task loss alone; called with the spread of the
    training scores, their standard deviation)."""

    name: str
    description: str
    harden: dict[str, Any] | None = None
    defense: Callable[[float], Defense] | None = None


def _consistency(name: str, beta: float, note: str = "") -> Recipe:
    """Consistency training as measured on the default model: eps 4/255, 3 steps, ``beta`` in
    units of the training scores' variance; no block."""
    return Recipe(
        name,
        f"consistency training (TRADES for scores): eps 4/255, 3 steps, beta {beta:g}; no block{note}",
        defense=lambda spread: ConsistencyTraining(eps=4 / 255, steps=3, beta=beta, scale=spread),
    )


RECIPES: dict[str, Recipe] = {
    "robust": _consistency("robust", 0.005),
    "robust-strong": _consistency("robust-strong", 0.02, " (more robust, less accurate)"),
    "paper": Recipe(
        "paper",
        "Meleshin et al.: RobustBlock (Cayley) before the last conv block, 10% l2 pruning, plain fine-tune",
        harden={"position": "auto", "ortho": "cayley", "prune": "l2", "amount": 0.10},
    ),
}


def _score_spread(train: DataSpec) -> float:
    """The standard deviation of the training scores (1.0 when they cannot be read up front)."""
    targets = known_targets(as_dataset(train, "train"))
    if targets is None or targets.numel() < 2 or not float(targets.std()) > 0:
        warnings.warn(
            "robustify cannot read the spread of the training scores up front (a Dataset without .targets, or "
            "constant scores): the consistency penalty is measured in raw score units; pass "
            "defense=ConsistencyTraining(scale=<their standard deviation>) to fix its scale",
            stacklevel=3,
        )
        return 1.0
    return float(targets.std())


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
    ``defense``. The model is copied unless ``inplace``.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; available: {sorted(RECIPES)}")
    chosen = RECIPES[recipe]
    if chosen.harden is None:
        if harden_options:
            raise ValueError(f"recipe {recipe!r} adds no block: harden_options {sorted(harden_options)} have no effect")
        hardened = model if inplace else copy.deepcopy(model)
    else:
        hardened = harden(model, **{**chosen.harden, **(harden_options or {}), "inplace": inplace})
    options = dict(finetune_options)
    if chosen.defense is not None and "defense" not in options:
        options["defense"] = chosen.defense(_score_spread(train))
    result = finetune(hardened, train, val, **options)
    return hardened, result
