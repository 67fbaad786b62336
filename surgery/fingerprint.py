"""Fingerprints of a run, so a checkpoint is resumed only by the run that wrote it.

A checkpoint folder reused for another model, other settings or other data would
otherwise hand back the earlier run's weights as if they were this run's. A run is
fingerprinted by three parts, each compared on resume so the refusal can say which
differs: the model as it enters the run (every parameter and buffer name, shape and
value), the settings (a JSON-able dict, kept whole so the differing keys can be
named), and the data (lengths, the scores when a dataset exposes them without loading
images, a strided sample of the pixels of tensor data, a subset's indices, an image
folder's file names and read size; any other Dataset that loads or augments images on
the fly is known by its type, length and scores only).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = [
    "update_digest", "model_fingerprint", "state_fingerprint", "data_fingerprint", "image_fingerprints", "settings_record",
    "differences",
]

_PIXEL_SAMPLE = 1 << 20  # elements of a tensor dataset's images hashed (a strided sample)
_IMAGE_SAMPLE = 1 << 14  # elements of one image hashed by image_fingerprints


def update_digest(digest, tensor: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to a hashlib digest."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(f"{flat.dtype}{tuple(tensor.shape)}".encode())
    digest.update(flat.view(torch.uint8).numpy().tobytes())


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of every parameter and buffer: names, shapes, dtypes and values."""
    return state_fingerprint(model.state_dict())


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, shapes, dtypes and values, in its order."""
    digest = hashlib.sha256()
    for name, value in state.items():
        digest.update(name.encode())
        update_digest(digest, value)
    return digest.hexdigest()


def data_fingerprint(*datasets: Dataset | None, targets=None) -> str:
    """sha256 of what can be read of each dataset cheaply (``targets(dataset)`` gives its
    scores or None)."""
    digest = hashlib.sha256()
    for dataset in datasets:
        if dataset is None:
            digest.update(b"none")
            continue
        digest.update(f"{type(dataset).__name__}:{len(dataset)}".encode())
        scores = targets(dataset) if targets is not None else None
        if scores is not None:
            update_digest(digest, scores)
        _update_with_contents(digest, dataset)
    return digest.hexdigest()


def _update_with_contents(digest, dataset: Dataset) -> None:
    """Feed what tells a dataset's images apart without reading them all: a strided sample of a
    tensor dataset's pixels, a subset's indices into its dataset, a folder's file names and the
    size it reads them at (not the folder's path, so a moved folder still resumes)."""
    if isinstance(dataset, TensorDataset):
        images = dataset.tensors[0].reshape(-1)
        update_digest(digest, images[:: max(1, images.numel() // _PIXEL_SAMPLE)])
    elif isinstance(dataset, Subset):
        digest.update(json.dumps([int(i) for i in dataset.indices]).encode())
        digest.update(type(dataset.dataset).__name__.encode())
        _update_with_contents(digest, dataset.dataset)
    elif isinstance(getattr(dataset, "names", None), list) and isinstance(getattr(dataset, "size", None), tuple):
        digest.update(json.dumps({"names": dataset.names, "size": list(dataset.size)}).encode())


def image_fingerprints(images: torch.Tensor) -> torch.Tensor:
    """One nonzero int64 per image of a (B, C, H, W) batch: a digest of its shape and a strided
    sample of its pixels (as float32), so a cached result is matched to the image it was made on."""
    prints = []
    for image in images.detach().to("cpu", torch.float32):
        digest = hashlib.sha1(str(tuple(image.shape)).encode())
        flat = image.reshape(-1)
        digest.update(flat[:: max(1, flat.numel() // _IMAGE_SAMPLE)].contiguous().numpy().tobytes())
        prints.append(int.from_bytes(digest.digest()[:8], "little", signed=True) or 1)  # 0 means "none"
    return torch.tensor(prints, dtype=torch.int64)


def settings_record(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as plain JSON values (anything else by its ``repr``)."""
    return json.loads(json.dumps(settings, sort_keys=True, default=repr))


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Readable differences between a checkpoint's record and this run's."""
    found = []
    for part in ("model", "data"):
        if recorded.get(part) != current[part]:
            found.append(f"the {part}")
    old, new = recorded.get("settings", {}), current["settings"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            found.append(f"{key} ({old.get(key)!r} then, {new.get(key)!r} now)")
    return found
