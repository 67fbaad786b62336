"""``blend``: move a fine-tuned model's weights part of the way back to the original's.

Weight-space ensembling (WiSE-FT, Wortsman et al., "Robust fine-tuning of zero-shot
models", CVPR 2022): ``theta = theta_original + keep * (theta_finetuned - theta_original)``
for every floating-point tensor the two models share, parameters and buffers (BatchNorm
statistics) alike. A fine-tune from a trained model stays in one basin, so the blend
trades the fine-tune's gain (here: robustness) against what it cost (here: correlation
with MOS) more gently than stopping the fine-tune early would.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .blocks import RobustBlock, RobustSplice

__all__ = ["blend", "counterparts"]


def counterparts(model: nn.Module, state: dict, reference: dict) -> dict[str, str]:
    """``model``'s state names -> its original's (``reference``: the original's state names), across
    splices: a module protected by a RobustBlock is ``<path>.original`` in ``model`` and ``<path>`` in
    an unhardened original."""
    spliced = [name for name, m in model.named_modules() if isinstance(m, RobustSplice)]
    blocks = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, RobustBlock))
    pairs, unmatched = {}, []
    for key in state:
        candidates = [key] + [f"{p}.{key[len(p) + len('.original.'):]}" for p in spliced if key.startswith(f"{p}.original.")]
        found = next((c for c in candidates if c in reference), None)
        if found is not None:
            pairs[key] = found
        elif not key.startswith(blocks):
            unmatched.append(key)
    missing = sorted(set(reference) - set(pairs.values()))
    if unmatched or missing:
        example = f"{unmatched[0]!r} has no counterpart" if unmatched else f"the original's {missing[0]!r} is missing"
        raise ValueError(
            f"cannot blend: the two models are not one architecture ({len(unmatched) + len(missing)} tensors differ; "
            f"{example}); pass the model the fine-tune started from"
        )
    return pairs


def _fraction(keep, what: str) -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 <= keep <= 1.0:
        raise ValueError(f"{what} must be in [0, 1] (the fraction of the fine-tune's change kept), got {keep!r}")
    return float(keep)


def _keep_of(keep: float | Mapping[str, float], names: Iterable[str] = ()) -> Callable[..., float]:
    """The keep of a tensor known by one or more state names: ``keep`` itself, or from a mapping
    of module names to keeps (the longest name that contains one of its names wins; ``""``,
    which must be there, for the rest).
    Every other name of the mapping must cover one of ``names`` (a misspelt name would
    otherwise blend its module at the ``""`` keep without a word)."""
    if not isinstance(keep, Mapping):
        value = _fraction(keep, "keep")
        return lambda *names: value
    if "" not in keep:
        raise ValueError(f"a keep per module needs a '' entry, the keep of every tensor no other name covers; got {sorted(keep)}")
    keeps = {module: _fraction(value, f"keep[{module!r}]") for module, value in keep.items()}
    by_length = sorted(keeps, key=len, reverse=True)

    def module_of(name: str) -> str:
        return next(m for m in by_length if m in ("", name) or name.startswith(f"{m}."))

    names = list(names)
    unused = sorted(set(keeps) - {""} - {module_of(n) for n in names}) if names else []
    if unused:
        raise ValueError(f"keep names {unused[:5]} cover no tensor of the model: pass module names of the fine-tuned model")
    return lambda *names: keeps[max((module_of(n) for n in names), key=len)]


def blend(model: nn.Module, original: nn.Module, keep: float | Mapping[str, float]) -> nn.Module:
    """Blend ``model``'s weights in place with ``original``'s, keeping ``keep`` of their
    difference (1: ``model`` as it is, 0: the original's weights); returns ``model``.

    ``keep`` may differ by module: ``{"": 0.2, "head": 1.0}`` keeps 20% of the change of every
    tensor but the head's, and all of the head's (the longest module name that contains a
    tensor gives its keep). ``original`` is the model the fine-tune started from, hardened or
    not: the weights of a spliced RobustBlock, which it lacks, keep their values. Integer
    buffers (BatchNorm's step counters) are left alone. Shared tensors must have the same
    shape: a pruned model cannot be blended with its unpruned original.
    """
    reference = original.state_dict()
    state = model.state_dict()
    pairs = counterparts(model, state, reference)
    # a name in the fine-tuned model's naming or in the original's (across a splice)
    keep_for = _keep_of(keep, [*pairs, *pairs.values()])
    clashes = [k for k, r in pairs.items() if reference[r].shape != state[k].shape]
    if clashes:
        key = clashes[0]
        raise ValueError(
            f"cannot blend: {len(clashes)} tensors changed shape, e.g. {key!r} "
            f"{tuple(reference[pairs[key]].shape)} -> {tuple(state[key].shape)} (pruned?); blend before pruning"
        )
    blended = set()  # a module reached by two names lists its tensors twice: blend them once
    with torch.no_grad():
        for key, source in pairs.items():
            value = state[key]
            if value.is_floating_point() and value.data_ptr() not in blended:
                blended.add(value.data_ptr())
                value.lerp_(reference[source].to(value.device, value.dtype), 1.0 - keep_for(key, source))
    return model
