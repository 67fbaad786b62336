"""Accuracy and robustness scores of an IQA model (Meleshin et al. §4).

* SROCC, PLCC, KROCC between predictions and MOS.
* On scores min-max normalised with the model's score range (``lo``/``hi``,
  measured on its training set or given): ``AbsGain = mean(f(x~) - f(x))`` and
  ``R-Score = mean log10(max(b1 - f(x~), f(x) - b0) / |f(x~) - f(x)|)`` with b0 = 0,
  b1 = 1 after normalisation (SPEC §4). An unchanged score would make the R-Score
  infinite; changes are floored at ``1e-6`` of the range (R-Score <= ~6 per image).
* The area under a curve over the eps grid (trapezoid), and the paper's 2:1
  weighting of KonIQ-10k and NIPS 2017 results.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import integrate, stats

__all__ = [
    "srocc",
    "plcc",
    "krocc",
    "normalize",
    "abs_gain",
    "r_score",
    "auc",
    "weighted_mean",
    "score_range",
    "MIN_CHANGE",
]

MIN_CHANGE = 1e-6

ArrayLike = Sequence[float] | np.ndarray


def _vector(values, name: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array))[:10].tolist()
        raise ValueError(f"{name} contains NaN or inf at positions {bad}: the model or the data is broken")
    return array


def _pair(prediction, target) -> tuple[np.ndarray, np.ndarray]:
    p, t = _vector(prediction, "prediction"), _vector(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"prediction and target differ in length: {p.size} vs {t.size}")
    if p.size < 2:
        raise ValueError("a correlation needs at least two images")
    for array, name in ((p, "prediction"), (t, "target")):
        if np.ptp(array) == 0:
            raise ValueError(f"{name} is constant, so its correlation is undefined")
    return p, t


def srocc(prediction: ArrayLike, target: ArrayLike) -> float:
    """Spearman rank-order correlation."""
    return float(stats.spearmanr(*_pair(prediction, target)).statistic)


def plcc(prediction: ArrayLike, target: ArrayLike) -> float:
    """Pearson linear correlation (on the raw predictions, no logistic fit)."""
    return float(stats.pearsonr(*_pair(prediction, target)).statistic)


def krocc(prediction: ArrayLike, target: ArrayLike) -> float:
    """Kendall rank-order correlation."""
    return float(stats.kendalltau(*_pair(prediction, target)).statistic)


def score_range(train_scores: ArrayLike) -> tuple[float, float]:
    """(min, max) of a model's scores on its training set: the normalisation range."""
    array = _vector(train_scores, "train_scores")
    lo, hi = float(array.min()), float(array.max())
    if hi <= lo:
        raise ValueError("the model gives the same score to every training image; no range to normalise by")
    return lo, hi


def normalize(scores: ArrayLike, lo: float, hi: float) -> np.ndarray:
    """Min-max normalisation to the model's score range."""
    if not hi > lo:
        raise ValueError(f"score range must have hi > lo, got ({lo}, {hi})")
    return (_vector(scores, "scores") - lo) / (hi - lo)


def abs_gain(clean: ArrayLike, attacked: ArrayLike, lo: float, hi: float) -> float:
    """Mean score change caused by the attack, in units of the score range (lower is more robust)."""
    c, a = normalize(clean, lo, hi), normalize(attacked, lo, hi)
    if c.shape != a.shape:
        raise ValueError(f"clean and attacked scores differ in length: {c.size} vs {a.size}")
    return float(np.mean(a - c))


def r_score(clean: ArrayLike, attacked: ArrayLike, lo: float, hi: float) -> float:
    """Mean log10 ratio of the room left to the change made (higher is more robust)."""
    c, a = normalize(clean, lo, hi), normalize(attacked, lo, hi)
    if c.shape != a.shape:
        raise ValueError(f"clean and attacked scores differ in length: {c.size} vs {a.size}")
    room = np.maximum(1.0 - a, c - 0.0)
    change = np.maximum(np.abs(a - c), MIN_CHANGE)
    return float(np.mean(np.log10(np.maximum(room, MIN_CHANGE) / change)))


def auc(eps: ArrayLike, values: ArrayLike) -> float:
    """Area under ``values`` over the eps grid (trapezoid rule), eps in the given units."""
    x, y = _vector(eps, "eps"), _vector(values, "values")
    if x.shape != y.shape or x.size < 2:
        raise ValueError("auc needs at least two (eps, value) points of equal length")
    order = np.argsort(x)
    return float(integrate.trapezoid(y[order], x[order]))


def weighted_mean(values: Sequence[float], weights: Sequence[float] = (2.0, 1.0)) -> float:
    """Weighted mean, by default the paper's 2:1 (KonIQ-10k : NIPS 2017)."""
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if v.shape != w.shape:
        raise ValueError(f"{v.size} values but {w.size} weights")
    return float(np.sum(v * w) / np.sum(w))
