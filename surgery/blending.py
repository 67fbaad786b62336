"""``blend``: move a fine-tuned model's weights part of the way back to the original's.

Weight-space ensembling (WiSE-FT, Wortsman et al., "Robust fine-tuning of zero-shot
models", CVPR 2022): ``theta = theta_original + keep * (theta_finetuned - theta_original)``
for every floating-point tensor the two models share, parameters and buffers (BatchNorm
statistics) alike. A fine-tune from a trained model stays in one basin, so the blend
trades the fine-tune's gain (here: robustness) against what it cost (here: correlation
with MOS) more gently than stopping the fine-tune early would.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["blend"]


def blend(model: nn.Module, original: nn.Module, keep: float) -> nn.Module:
    """Blend ``model``'s weights in place with ``original``'s, keeping ``keep`` of their
    difference (1: ``model`` as it is, 0: the original's weights); returns ``model``.

    Tensors only ``model`` has (a spliced RobustBlock) keep their values; integer buffers
    (BatchNorm's step counters) are left alone. Shared tensors must have the same shape:
    a pruned model cannot be blended with its unpruned original.
    """
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be in [0, 1] (the fraction of the fine-tune's change kept), got {keep}")
    reference = original.state_dict()
    state = model.state_dict()
    clashes = [k for k, v in state.items() if k in reference and reference[k].shape != v.shape]
    if clashes:
        raise ValueError(
            f"cannot blend: {len(clashes)} tensors changed shape, e.g. {clashes[0]!r} "
            f"{tuple(reference[clashes[0]].shape)} -> {tuple(state[clashes[0]].shape)} (pruned?); blend before pruning"
        )
    with torch.no_grad():
        for key, value in state.items():
            if key in reference and value.is_floating_point():
                value.lerp_(reference[key].to(value.device, value.dtype), 1.0 - keep)
    return model
