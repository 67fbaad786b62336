"""``resnet18-scratch``: a model of another family than the default one, trained from scratch.

A ResNet-18 (He et al. 2016; timm's ``resnet18``, random initialisation, no ImageNet weights)
with an MLP head (any input size), trained by ``benchmarks/train_scratch.py`` on random 128x128
crops of the default model's data: the NIPS 2017 synthetic distortions with DSS **pseudo-MOS**
(not human scores), the same split by reference; it scores whole images. It exists
to show the robust recipe on a network that shares neither the default model's family nor
its ImageNet start. Its weights ship (``create_model("resnet18-scratch", pretrained=True)``:
held-out SROCC 0.906, docs/models.md); ``load_scratch_weights`` loads them or what the script writes.
"""
from __future__ import annotations

import os

import torch

from .heads import TimmIQA

__all__ = ["SCRATCH_WEIGHTS", "SCRATCH_SETTINGS", "resnet18_scratch", "load_scratch_weights"]

SCRATCH_WEIGHTS = os.path.join(os.path.dirname(__file__), "weights", "resnet18-scratch.pt")
SCRATCH_SETTINGS = {"backbone": "resnet18", "hidden": (256,)}


def resnet18_scratch(**kwargs) -> TimmIQA:
    """The architecture (random weights); keyword arguments replace :data:`SCRATCH_SETTINGS`."""
    return TimmIQA(**{**SCRATCH_SETTINGS, **kwargs})


def load_scratch_weights(model: TimmIQA, path: str | os.PathLike = SCRATCH_WEIGHTS) -> TimmIQA:
    """The trained weights and the pseudo-MOS range they were trained on (``model.score_range``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"resnet18-scratch weights {os.fspath(path)!r} are missing: reinstall the package or run benchmarks/train_scratch.py"
        )
    data = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in data["state_dict"].items()})
    model.score_range = tuple(data["score_range"])
    return model
