"""The model file format, written by :func:`surgery.save` and by ``finetune``'s ``best.pt``.

A file holds plain data only (read with ``weights_only=True``): the surgery record
(blocks and pruned widths, ``model.surgery_config``), the zoo spec when the model came
from :func:`surgery.create_model` (``model.surgery_model_spec``), the score range and
the state_dict. Writing needs nothing of the surgery, so the training loop writes
loadable files without importing hardening, pruning or the zoo; rebuilding the
architecture from a file is :func:`surgery.load`'s work.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .files import atomic_save

__all__ = ["FORMAT", "CONFIG_ATTR", "MODEL_SPEC_ATTR", "write", "read"]

FORMAT = "surgery.model.v2"
READABLE = ("surgery.model.v1", FORMAT)  # v1: no pruning record, no score range
RECORDS = ("model", "harden", "state_dict")  # what every readable format holds
CONFIG_ATTR = "surgery_config"  # the surgery record a hardened model carries
MODEL_SPEC_ATTR = "surgery_model_spec"  # the zoo name and arguments a zoo model carries


def write(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s records and weights atomically."""
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


def read(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A model file's records, checked: the format tag and every record present."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved model at {path!r}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path!r} is not a readable weights-only surgery file: {err}") from err
    if not isinstance(data, dict) or data.get("format") not in READABLE:
        raise ValueError(f"{path!r} was not written by surgery.save (format {FORMAT!r} expected)")
    missing = [key for key in RECORDS if key not in data]
    if missing or not isinstance(data["state_dict"], dict):
        lacks = ", ".join(missing) if missing else "state_dict (not a dict)"
        raise ValueError(f"{path!r} has the surgery format tag but lacks {lacks}: it is damaged; save the model again")
    return data
