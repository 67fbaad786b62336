"""Argument checks shared by the attacks, the defences and the fine-tune: a setting that would
do nothing, or the wrong thing, without an error (0 steps, a negative budget, a float seed)
is refused by name, with what it must be."""
from __future__ import annotations

import math
import numbers

__all__ = ["check_budget", "check_count", "check_non_negative", "check_seed"]


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_seed(owner: str, seed: int | None) -> int | None:
    """``seed``: a whole number or None."""
    if seed is not None and not _whole(seed):
        raise ValueError(f"{owner} needs an integer seed or None, got seed={seed!r}")
    return None if seed is None else int(seed)


def check_budget(owner: str, **values: float) -> float:
    """Each value a finite number > 0 (a budget, a step, a learning rate); returns the last one."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{owner} needs a finite {name} > 0, got {name}={value!r}")
    return float(value)


def check_non_negative(owner: str, **values: float) -> float:
    """Each value a finite number >= 0 (a weight, a penalty); returns the last one."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{owner} needs a finite {name} >= 0, got {name}={value!r}")
    return float(value)


def check_count(owner: str, **values: int) -> None:
    """Each value a whole number >= 1 (steps, iterations, restarts, epochs, a batch size)."""
    for name, value in values.items():
        if not _whole(value) or value < 1:
            raise ValueError(f"{owner} needs an integer {name} >= 1, got {name}={value!r}")
