"""A synthetic-distortion IQA set labelled with pseudo-MOS (SPEC §7).

No human-scored images are available offline, so quality labels come from a
well-established full-reference metric of piq comparing each distorted image with
its pristine reference: they are **pseudo-MOS**, never human opinion scores.
Every reference image gets each distortion type (Gaussian blur, Gaussian noise,
JPEG, contrast loss) at increasing levels; the pristine image itself is kept with
the metric's perfect score. Distortions are deterministic, so only the labels are
cached on disk; images are rebuilt on access. Split by reference image
(:meth:`SyntheticIQA.split`), never by distorted copy.
"""
from __future__ import annotations

import hashlib
import io
import os
from typing import Callable, Sequence

import numpy as np
import piq
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Subset

from ..files import atomic_save

__all__ = ["SyntheticIQA", "distort", "DISTORTIONS", "PSEUDO_MOS_METRICS"]

# level 1 (mild) .. 5 (strong)
DISTORTIONS: dict[str, tuple[float, ...]] = {
    "blur": (0.6, 1.2, 2.0, 3.0, 4.5),  # Gaussian sigma, pixels
    "noise": (0.02, 0.04, 0.07, 0.11, 0.16),  # Gaussian std
    "jpeg": (60, 35, 20, 12, 6),  # JPEG quality
    "contrast": (0.8, 0.6, 0.45, 0.3, 0.2),  # contrast factor towards the mean
}

PSEUDO_MOS_METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "dss": lambda x, y: piq.dss(x, y, data_range=1.0, reduction="none"),
    "ms-ssim": lambda x, y: piq.multi_scale_ssim(x, y, data_range=1.0, reduction="none"),
    "fsim": lambda x, y: piq.fsim(x, y, data_range=1.0, reduction="none"),
    "vsi": lambda x, y: piq.vsi(x, y, data_range=1.0, reduction="none"),
    "gmsd": lambda x, y: 1 - piq.gmsd(x, y, data_range=1.0, reduction="none"),  # a distance, flipped
}


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    channels = image.shape[0]
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)[0]


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(decoded).permute(2, 0, 1)


def distort(image: torch.Tensor, kind: str, level: int, seed: int = 0) -> torch.Tensor:
    """``image`` (3, H, W) in [0, 1] with distortion ``kind`` at ``level`` 1..5; deterministic."""
    if kind not in DISTORTIONS:
        raise ValueError(f"unknown distortion {kind!r}: choose from {sorted(DISTORTIONS)}")
    if not 1 <= level <= len(DISTORTIONS[kind]):
        raise ValueError(f"level must be 1..{len(DISTORTIONS[kind])}, got {level}")
    value = DISTORTIONS[kind][level - 1]
    if kind == "blur":
        out = _gaussian_blur(image, value)
    elif kind == "noise":
        generator = torch.Generator().manual_seed(seed)
        out = image + value * torch.randn(image.shape, generator=generator)
    elif kind == "jpeg":
        out = _jpeg(image, value)
    else:
        mean = image.mean(dim=(1, 2), keepdim=True)
        out = mean + value * (image - mean)
    return out.clamp(0, 1)


class SyntheticIQA(Dataset):
    """References x distortions x levels (+ the references themselves) with pseudo-MOS.

    Args:
        references: (N, 3, H, W) pristine images in [0, 1].
        metric: full-reference metric giving the pseudo-MOS: ``"dss"`` (default),
            ``"ms-ssim"``, ``"fsim"``, ``"vsi"`` or ``"gmsd"``.
        distortions: distortion types (keys of :data:`DISTORTIONS`).
        cache: file for the labels; reused when references and settings match.
    """

    def __init__(
        self,
        references: torch.Tensor,
        metric: str = "dss",
        distortions: Sequence[str] = tuple(DISTORTIONS),
        levels: int = 5,
        cache: str | os.PathLike | None = None,
        batch_size: int = 32,
    ):
        if metric not in PSEUDO_MOS_METRICS:
            raise ValueError(f"unknown pseudo-MOS metric {metric!r}: choose from {sorted(PSEUDO_MOS_METRICS)}")
        if references.ndim != 4 or references.shape[1] != 3:
            raise ValueError(f"references must be (N, 3, H, W), got {tuple(references.shape)}")
        self.references = references.float().cpu()
        self.metric = metric
        self.items: list[tuple[int, str | None, int]] = []
        for ref in range(references.shape[0]):
            self.items.append((ref, None, 0))
            self.items += [(ref, kind, level) for kind in distortions for level in range(1, levels + 1)]
        self.labels = self._labels(cache, batch_size)

    def _key(self) -> str:
        digest = hashlib.sha1(self.metric.encode())
        digest.update(repr(self.items).encode() + repr(DISTORTIONS).encode())
        digest.update(self.references.numpy().tobytes())
        return digest.hexdigest()

    def _labels(self, cache, batch_size: int) -> torch.Tensor:
        key = self._key()
        if cache is not None and os.path.isfile(cache):
            data = torch.load(cache, map_location="cpu", weights_only=True)
            if data.get("key") == key:
                return data["labels"]
        score = PSEUDO_MOS_METRICS[self.metric]
        labels = []
        with torch.no_grad():
            for start in range(0, len(self.items), batch_size):
                chunk = range(start, min(start + batch_size, len(self.items)))
                distorted = torch.stack([self._image(i) for i in chunk])
                reference = torch.stack([self.references[self.items[i][0]] for i in chunk])
                labels.append(score(distorted, reference).float().reshape(-1))
        labels = torch.cat(labels)
        if cache is not None:
            atomic_save({"key": key, "labels": labels, "metric": self.metric}, cache)
        return labels

    def _image(self, index: int) -> torch.Tensor:
        ref, kind, level = self.items[index]
        image = self.references[ref]
        return image if kind is None else distort(image, kind, level, seed=index)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._image(index), self.labels[index]

    @property
    def targets(self) -> torch.Tensor:
        """The pseudo-MOS of every item, read without making images (as ``robustify`` reads the spread)."""
        return self.labels

    def reference_of(self, index: int) -> int:
        return self.items[index][0]

    def split(self, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0) -> list[Subset]:
        """Subsets whose reference images are disjoint (a reference and all its copies go together)."""
        if abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {fractions}")
        order = np.random.default_rng(seed).permutation(self.references.shape[0])
        bounds = np.round(np.cumsum([0, *fractions]) * len(order)).astype(int)
        subsets = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            chosen = set(order[lo:hi].tolist())
            subsets.append(Subset(self, [i for i, (ref, _, _) in enumerate(self.items) if ref in chosen]))
        return subsets
