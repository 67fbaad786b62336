"""Orthogonal convolutions for the RobustBlock and a registry to choose one by name.

``get_ortho("cayley" | "aol" | "aoc")`` returns the layer class; a user's own
class (any ``nn.Module`` whose constructor takes ``in_channels, out_channels,
kernel_size, bias``) can be passed directly or registered under a name with
:func:`register_ortho`. Names are resolved, never imported.
"""
from __future__ import annotations

from typing import Callable, Iterable, Union

from torch import nn

from .aoc import AOCConv2d
from .aol import AOLConv2d
from .base import OrthoConv2d
from .cayley import CayleyConv2d

__all__ = [
    "OrthoConv2d", "CayleyConv2d", "AOLConv2d", "AOCConv2d", "register_ortho", "get_ortho", "ortho_name", "ortho_names"
]

OrthoSpec = Union[str, type]

_REGISTRY: dict[str, type] = {"cayley": CayleyConv2d, "aol": AOLConv2d, "aoc": AOCConv2d}


def register_ortho(name: str) -> Callable[[type], type]:
    """Class decorator: make ``harden(..., ortho=name)`` use this layer."""

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_ortho expects an nn.Module subclass, got {cls!r}")
        _REGISTRY[name.lower()] = cls
        return cls

    return decorate


def ortho_names() -> list[str]:
    return sorted(_REGISTRY)


def get_ortho(spec: OrthoSpec, layers: Iterable[type] = ()) -> type:
    """The layer class for a registered name, for the qualified name of one of ``layers``,
    or ``spec`` itself when it is an nn.Module class.

    A name is never imported: a file that names an unregistered class (``"pkg.Layer"``)
    resolves only against the classes the caller passes in ``layers``.
    """
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return spec
    if isinstance(spec, str) and spec.lower() in _REGISTRY:
        return _REGISTRY[spec.lower()]
    for cls in layers:
        if isinstance(spec, str) and ortho_name(cls) == spec:
            return get_ortho(cls)
    if isinstance(spec, str) and "." in spec:
        raise ValueError(
            f"orthogonal convolution {spec!r} is not registered (surgery never imports a class a file names): "
            "register it with surgery.ortho.register_ortho, or pass layers=[TheClass] to surgery.load"
        )
    raise ValueError(
        f"unknown orthogonal convolution {spec!r}: choose one of {ortho_names()}, "
        "pass an nn.Module class, or register one with surgery.ortho.register_ortho"
    )


def ortho_name(cls: type) -> str:
    """Registry name of a layer class, or its qualified name when unregistered."""
    for name, registered in _REGISTRY.items():
        if registered is cls:
            return name
    return f"{cls.__module__}.{cls.__qualname__}"
