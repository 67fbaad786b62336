"""Saving and loading hardened models: atomic writes, ``weights_only`` reads.

A file holds plain data only (:mod:`surgery.modelfile`): the surgery record (blocks and
pruned widths), the zoo spec when the model came from :func:`surgery.create_model`, the
score range and the state_dict. Loading rebuilds the architecture, splices the same
RobustBlocks, narrows the pruned layers in place and loads the weights, so no pickled
code runs and nothing a file names is imported.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

from . import modelfile
from .config import HardenConfig, resize_layers
from .hardening import apply_config
from .zoo import create_model

__all__ = ["save", "load"]


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Save a (hardened, pruned) model so :func:`load` can rebuild it: the surgery record,
    the zoo spec, ``score_range`` when the model has one, and the state_dict."""
    modelfile.write(model, path)


def load(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
    layers: Sequence[type] = (),
) -> nn.Module:
    """Load a model saved by :func:`save`.

    Zoo models rebuild themselves. For any other model pass ``model``: a fresh,
    unhardened instance of the original architecture; it is hardened in place
    with the saved config, its pruned layers are narrowed in place, and it receives
    the saved weights. ``layers``: unregistered orthogonal layer classes the file
    may name (nothing a file names is ever imported).
    """
    path = os.fspath(path)
    data = modelfile.read(path, map_location)
    if model is None:
        spec = data["model"]
        if spec is None:
            raise ValueError(
                f"{path!r} holds a model that did not come from surgery.create_model: "
                "pass model=<a fresh instance of the original architecture> to load it into"
            )
        model = create_model(spec["name"], **spec["kwargs"])
    if data["harden"] is not None:
        harden_data = dict(data["harden"])
        if isinstance(harden_data.get("pruning"), str):  # v1 kept only a description of the pruning
            raise ValueError(f"{path!r} holds a pruned model saved by an older surgery without a pruning record: re-save it")
        config = HardenConfig.from_dict(harden_data)
        apply_config(model, config, layers)
        for report in config.pruning:
            resize_layers(model, report.resized)
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"the weights in {path!r} do not fit the rebuilt {type(model).__name__}: {err}") from err
    if data.get("score_range") is not None:
        model.score_range = tuple(data["score_range"])
    return model.to(map_location)
