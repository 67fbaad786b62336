"""Saving and loading hardened models: atomic writes, ``weights_only`` reads.

A file holds plain data only: the hardening config, the zoo spec when the model
came from :func:`surgery.create_model`, and the state_dict. Loading rebuilds the
architecture, splices the same RobustBlocks and loads the weights, so no pickled
code ever runs.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .files import atomic_save
from .harden import CONFIG_ATTR, HardenConfig, apply_config
from .zoo import MODEL_SPEC_ATTR, create_model

__all__ = ["save", "load"]

FORMAT = "surgery.model.v1"


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Save a (hardened) model so :func:`load` can rebuild it."""
    config = getattr(model, CONFIG_ATTR, None)
    atomic_save(
        {
            "format": FORMAT,
            "model": getattr(model, MODEL_SPEC_ATTR, None),
            "harden": config.to_dict() if config is not None else None,
            "state_dict": model.state_dict(),
        },
        path,
    )


def load(path: str | os.PathLike, model: nn.Module | None = None, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved by :func:`save`.

    Zoo models rebuild themselves. For any other model pass ``model``: a fresh,
    unhardened instance of the original architecture; it is hardened in place
    with the saved config and receives the saved weights.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved model at {path!r}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path!r} is not a readable weights-only surgery file: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path!r} was not written by surgery.save (format {FORMAT!r} expected)")
    if model is None:
        spec = data["model"]
        if spec is None:
            raise ValueError(
                f"{path!r} holds a model that did not come from surgery.create_model: "
                "pass model=<a fresh instance of the original architecture> to load it into"
            )
        model = create_model(spec["name"], **spec["kwargs"])
    if data["harden"] is not None:
        apply_config(model, HardenConfig.from_dict(data["harden"]))
    _resize_to(model, data["state_dict"])
    model.load_state_dict(data["state_dict"])
    return model.to(map_location)


def _resize_to(model: nn.Module, state_dict: dict) -> None:
    """Give pruned layers the channel counts of the saved weights (pruning only narrows
    Conv2d, Linear and BatchNorm layers, so rebuilding those with the saved shapes
    reproduces the pruned architecture)."""
    for name, module in list(model.named_modules()):
        weight = state_dict.get(f"{name}.weight" if name else "weight")
        if weight is None or not hasattr(module, "weight") or module.weight is None or module.weight.shape == weight.shape:
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups == module.in_channels and module.groups > 1
            in_channels = weight.shape[0] if depthwise else weight.shape[1] * module.groups
            new = nn.Conv2d(
                in_channels, weight.shape[0], module.kernel_size, module.stride, module.padding, module.dilation,
                groups=in_channels if depthwise else module.groups, bias=module.bias is not None, padding_mode=module.padding_mode,
            )
        elif isinstance(module, nn.Linear):
            new = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            new = type(module)(weight.shape[0], module.eps, module.momentum, module.affine, module.track_running_stats)
        else:
            raise ValueError(f"saved weights of {name!r} ({type(module).__name__}) have shape {tuple(weight.shape)}, "
                             f"the rebuilt model has {tuple(module.weight.shape)}")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new.to(module.weight.device))
