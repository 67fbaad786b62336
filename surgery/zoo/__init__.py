"""The model zoo: the paper's IQA models, buildable offline, and one factory for them.

``create_model(name, pretrained=False, checkpoint=None, **kwargs)`` builds a model
by name (timm-style). Random weights by default; ``checkpoint`` loads a user's
state_dict (``weights_only=True``). The zoo builds models, it does not train them.
"""
from __future__ import annotations

import fnmatch
import os
from typing import Callable

import torch
from torch import nn

from ..modelfile import MODEL_SPEC_ATTR
from .default import DEFAULT_ROBUST_WEIGHTS, DefaultIQA
from .heads import MLPHead, Normalize, TimmIQA
from .koncept import KonCept512
from .linearity import Linearity
from .pyiqa import PYIQA_METRICS, create_pyiqa_metric
from .scratch import load_scratch_weights, resnet18_scratch

__all__ = [
    "create_model",
    "register_model",
    "list_models",
    "load_checkpoint",
    "DefaultIQA",
    "Linearity",
    "KonCept512",
    "TimmIQA",
    "MLPHead",
    "Normalize",
    "MODEL_SPEC_ATTR",
]


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "default": DefaultIQA,
    "default-robust": DefaultIQA,
    "default-lite2": lambda **kwargs: DefaultIQA(**{"arch": "efficientnet_lite2", **kwargs}),
    "resnet18-scratch": resnet18_scratch,
    "linearity": Linearity,
    "koncept512": KonCept512,
    "timm-iqa": TimmIQA,
    **{name: (lambda name=name, **kw: create_pyiqa_metric(name, **kw)) for name in PYIQA_METRICS},
}
_PRETRAINED: dict[str, Callable[[nn.Module], None]] = {
    "default": lambda model: model.load_imagenet().load_trained(),
    "default-robust": lambda model: model.load_imagenet().load_trained(DEFAULT_ROBUST_WEIGHTS),
    "default-lite2": lambda model: model.load_imagenet().load_trained(),
    "resnet18-scratch": load_scratch_weights,
}


def register_model(name: str, pretrained: Callable[[nn.Module], None] | None = None):
    """Decorator adding a builder to :func:`create_model`; ``pretrained`` loads shipped weights."""

    key = name.lower()  # names are case-insensitive, as in create_model

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[key] = builder
        if pretrained is not None:
            _PRETRAINED[key] = pretrained
        return builder

    return decorate


def list_models(filter: str = "", pretrained: bool = False) -> list[str]:
    """Model names, sorted; ``filter`` is a shell pattern (``"default*"``, ``"*iqa*"``), and
    ``pretrained=True`` keeps only the models whose weights ship with the package."""
    names = sorted(_PRETRAINED if pretrained else _BUILDERS)
    return fnmatch.filter(names, filter.lower()) if filter else names


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load a state_dict file (raw, or under "state_dict" / "model" / "params") without running pickled code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {os.fspath(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {os.fspath(path)!r} as a weights-only state_dict: {err}") from err
    for key in ("state_dict", "model", "params"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    model.load_state_dict(data, strict=strict)
    return model


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint: str | os.PathLike | None = None,
    **kwargs,
) -> nn.Module:
    """Build a zoo model by name; see :func:`list_models`.

    ``pretrained=True`` loads the weights that ship with the package (only where a
    model has them); ``checkpoint`` loads your own. Keyword arguments go to the
    model's constructor (e.g. ``create_model("linearity", arch="resnext101_32x8d")``,
    ``create_model("timm-iqa", backbone="resnet18")``).
    """
    key = name.lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    if pretrained and key not in _PRETRAINED:
        raise ValueError(
            f"no pretrained weights ship for {name!r} (nothing is downloaded at run time); "
            "pass checkpoint='path/to/state_dict.pt' with your own weights"
        )
    model = _BUILDERS[key](**kwargs)
    if pretrained:
        _PRETRAINED[key](model)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    setattr(model, MODEL_SPEC_ATTR, {"name": key, "kwargs": dict(kwargs)})
    return model
