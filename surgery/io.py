"""Saving and loading hardened models: atomic writes, ``weights_only`` reads.

A file holds plain data only: the surgery record (blocks and pruned widths), the
zoo spec when the model came from :func:`surgery.create_model`, the score range and
the state_dict. Loading rebuilds the architecture, splices the same RobustBlocks,
narrows the pruned layers in place and loads the weights, so no pickled code runs
and nothing a file names is imported.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

from .config import CONFIG_ATTR, HardenConfig, resize_layers
from .files import atomic_save
from .hardening import apply_config
from .zoo import MODEL_SPEC_ATTR, create_model

__all__ = ["save", "load"]

FORMAT = "surgery.model.v2"
_READABLE = ("surgery.model.v1", FORMAT)  # v1: no pruning record, no score range
_RECORDS = ("model", "harden", "state_dict")  # what every readable format holds


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Save a (hardened, pruned) model so :func:`load` can rebuild it: the surgery record,
    the zoo spec, ``score_range`` when the model has one, and the state_dict."""
    config = getattr(model, CONFIG_ATTR, None)
    score_range = getattr(model, "score_range", None)
    atomic_save(
        {
            "format": FORMAT,
            "model": getattr(model, MODEL_SPEC_ATTR, None),
            "harden": config.to_dict() if config is not None else None,
            "score_range": None if score_range is None else [float(v) for v in score_range],
            "state_dict": model.state_dict(),
        },
        path,
    )


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
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved model at {path!r}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path!r} is not a readable weights-only surgery file: {err}") from err
    if not isinstance(data, dict) or data.get("format") not in _READABLE:
        raise ValueError(f"{path!r} was not written by surgery.save (format {FORMAT!r} expected)")
    missing = [key for key in _RECORDS if key not in data]
    if missing or not isinstance(data["state_dict"], dict):
        lacks = ", ".join(missing) if missing else "state_dict (not a dict)"
        raise ValueError(f"{path!r} has the surgery format tag but lacks {lacks}: it is damaged; save the model again")
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
