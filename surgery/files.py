"""Atomic file writes shared by model saving, checkpoints, attack caches and reports."""
from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

__all__ = ["atomic_save", "atomic_write_text"]


def _atomic(path: str | os.PathLike, write, suffix: str, mode: str) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(handle, mode) as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file follows the umask like open()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    _atomic(path, lambda f: torch.save(obj, f), ".pt", "wb")


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write text the same way."""
    _atomic(path, lambda f: f.write(text), ".txt", "w")
