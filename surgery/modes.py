"""Module modes that survive the library: every submodule's own train/eval flag and
``requires_grad`` are saved on entry and given back on exit.

``model.train(was_training)`` sets every submodule to one mode, which silently puts a
pyiqa metric's inner network (kept in eval mode inside a metric in train mode) into
training mode. These context managers restore each module's flag individually.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

__all__ = ["preserved_modes", "eval_mode", "frozen", "measuring", "memory_layout", "state_copy", "restored_on_error"]


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Give every submodule back the train/eval flag it had on entry, whatever happens inside."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        # modules() lists a parent before its descendants, so each module's own
        # call comes last (``train()`` is kept, not ``.training =``: layers such as
        # CayleyConv2d drop caches there)
        for module, mode in modes:
            if module.training != mode:
                module.train(mode)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The whole model in eval mode inside; each submodule's own mode restored on exit."""
    with preserved_modes(model):
        for module in model.modules():
            if module.training:  # modules already in eval mode are not called again
                module.train(False)
        yield model


@contextlib.contextmanager
def frozen(model: nn.Module, trained: Iterable[nn.Parameter] = ()) -> Iterator[nn.Module]:
    """No gradients for the model's weights inside, except ``trained``'s; each parameter's
    ``requires_grad`` restored."""
    keep = {id(p) for p in trained}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(id(p) in keep)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def measuring(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen weights: what scoring and attacking need, with the model given
    back as it came (modes, ``requires_grad``; eval mode leaves buffers alone)."""
    with eval_mode(model), frozen(model):
        yield model


@contextlib.contextmanager
def memory_layout(model: nn.Module, channels_last: bool = True, keep_values: bool = False) -> Iterator[nn.Module]:
    """The model's 4-D weights in the channels-last memory layout inside: a convolution whose
    weight is channels-last runs channels-last whatever its input's layout (faster on CPU and
    CUDA). On exit every parameter gets back the very storage it had, so its layout is as it
    came; with ``keep_values`` (training) that storage first takes the values the weight has
    at exit, otherwise (measuring) the values it had on entry. Buffers and gradients are not
    touched."""
    if not channels_last:
        yield model
        return
    weights = [p for p in model.parameters() if p.dim() == 4]
    stored = [p.data for p in weights]
    try:
        for weight in weights:
            weight.data = weight.data.contiguous(memory_format=torch.channels_last)
        yield model
    finally:
        with torch.no_grad():
            for weight, data in zip(weights, stored):
                if keep_values:
                    data.copy_(weight.data)
                weight.data = data


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter and buffer, to give a model back its weights after a failure."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@contextlib.contextmanager
def restored_on_error(model: nn.Module) -> Iterator[nn.Module]:
    """On an error or an interrupt inside, give ``model`` back exactly as it came: the same
    submodule objects in the same places with their own attributes (a splice or pruning
    replaces children, tensors and widths), then the weights and buffers it had."""
    snapshot = []
    for module in model.modules():
        attributes = dict(vars(module))
        for key in ("_modules", "_parameters", "_buffers"):
            attributes[key] = dict(attributes[key])
        snapshot.append((module, attributes))
    values = state_copy(model)
    try:
        yield model
    except BaseException:
        for module, attributes in snapshot:
            vars(module).clear()
            vars(module).update(attributes)
        model.load_state_dict(values)
        raise
