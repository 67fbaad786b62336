"""DBCNN (Zhang et al., IEEE TCSVT 2020) and TReS (Golestaneh et al., WACV 2022) as
pyiqa metrics, built without network access.

Both are evaluated in Meleshin et al. (Table 2; DBCNN gets one RobustBlock per
branch). pyiqa's constructors download torchvision ImageNet weights (and DBCNN its
SCNN weights) even with ``pretrained=False``; here those calls are redirected to
random initialisation, so the metric is complete, offline, and ready for a user
checkpoint. Needs the optional extra: ``pip install surgery[pyiqa]``.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Iterator
from unittest import mock

from torch import nn

__all__ = ["create_pyiqa_metric", "PYIQA_METRICS"]

# metric name -> (pyiqa arch module, torchvision constructors it calls with weights=...)
PYIQA_METRICS = {
    "dbcnn": ("pyiqa.archs.dbcnn_arch", ("vgg16",)),
    "tres": ("pyiqa.archs.tres_arch", ("resnet50", "resnet34", "resnet18")),
}


def _import_pyiqa():
    try:
        return importlib.import_module("pyiqa")
    except ImportError as err:
        raise ImportError(
            "DBCNN and TReS come from pyiqa, which is not installed: pip install 'surgery[pyiqa]'"
        ) from err


def _without_weights(constructor):
    def build(*args, weights=None, **kwargs):
        return constructor(*args, weights=None, **kwargs)

    return build


@contextlib.contextmanager
def _offline(arch_module: str, constructors: tuple[str, ...]) -> Iterator[None]:
    import torchvision

    arch = importlib.import_module(arch_module)
    with contextlib.ExitStack() as stack:
        for name in constructors:
            original = getattr(torchvision.models, name)
            stack.enter_context(mock.patch.object(torchvision.models, name, _without_weights(original)))
        if hasattr(arch, "load_pretrained_network"):
            stack.enter_context(mock.patch.object(arch, "load_pretrained_network", lambda *a, **k: None))
        yield


def create_pyiqa_metric(name: str, device: str = "cpu", **kwargs) -> nn.Module:
    """A pyiqa ``InferenceModel`` for ``name`` with random weights, built offline.

    Keyword arguments go to ``pyiqa.create_metric`` (``as_loss``, metric options).
    """
    if name not in PYIQA_METRICS:
        raise ValueError(f"offline pyiqa builds exist for {sorted(PYIQA_METRICS)}, not {name!r}")
    pyiqa = _import_pyiqa()
    arch_module, constructors = PYIQA_METRICS[name]
    with _offline(arch_module, constructors):
        return pyiqa.create_metric(name, pretrained=False, device=device, **kwargs)
