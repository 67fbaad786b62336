"""Images from a folder, optionally with a CSV of scores: the generic IQA dataset.

Every image is read as RGB in [0, 1] and resized to a fixed size. A missing or
corrupt file raises an error naming it, or, with ``skip_bad=True``, is skipped
with a warning while every other image is kept.
"""
from __future__ import annotations

import csv
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = ["load_image", "ImageFolder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _rgb_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]. 16-bit greyscale keeps its full range (PIL's conversion
    to RGB would clip it at 255); EXIF orientation is applied by the caller."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") or grey.max() > 255 else 255.0
        return np.repeat((grey / peak)[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(3, H, W) float tensor in [0, 1], upright by its EXIF orientation, 16-bit images at
    full range; resized (antialiased bilinear) when ``size`` is given."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path!r} does not exist")
    try:
        with Image.open(path) as image:
            array = _rgb_array(ImageOps.exif_transpose(image))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"image {path!r} is corrupt or not an image: {err}") from err
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    if size is not None and tuple(tensor.shape[-2:]) != tuple(size):
        tensor = F.interpolate(tensor[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]
    return tensor.clamp_(0, 1)


class ImageFolder(Dataset):
    """Images of a folder (sorted), or those a CSV lists, with their scores.

    Args:
        root: folder holding the images.
        csv_path: optional CSV with an image column and a score column.
        image_column / score_column: column names in the CSV.
        size: (H, W) every image is resized to.
        skip_bad: skip missing or corrupt images with a warning instead of raising.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        csv_path: str | os.PathLike | None = None,
        image_column: str = "image",
        score_column: str | None = "mos",
        size: tuple[int, int] = (224, 224),
        skip_bad: bool = False,
    ):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"image folder {self.root!r} does not exist")
        self.size = tuple(size)
        self.names, self.targets = self._index(csv_path, image_column, score_column)
        if skip_bad:
            keep = []
            for i, name in enumerate(self.names):
                try:
                    load_image(os.path.join(self.root, name))
                    keep.append(i)
                except (FileNotFoundError, ValueError) as err:
                    warnings.warn(f"skipping {err}", stacklevel=2)
            self.names = [self.names[i] for i in keep]
            self.targets = None if self.targets is None else [self.targets[i] for i in keep]
        if not self.names:
            raise ValueError(f"no images found in {self.root!r}")

    def _index(self, csv_path, image_column, score_column) -> tuple[list[str], list[float] | None]:
        if csv_path is None:
            names = sorted(n for n in os.listdir(self.root) if n.lower().endswith(IMAGE_EXTENSIONS))
            return names, None
        if not os.path.isfile(csv_path):
            raise FileNotFoundError(f"score table {os.fspath(csv_path)!r} does not exist")
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first column name
            reader = csv.DictReader(f)
            missing = [c for c in (image_column, score_column) if c and c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{os.fspath(csv_path)!r} has no column(s) {missing}; columns: {reader.fieldnames}")
            rows = list(reader)
        names = [r[image_column] for r in rows]
        targets = [float(r[score_column]) for r in rows] if score_column else None
        return names, targets

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        image = load_image(os.path.join(self.root, self.names[index]), self.size)
        if self.targets is None:
            return image
        return image, torch.tensor(self.targets[index], dtype=torch.float32)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All images as one (N, 3, H, W) tensor, and the scores (or None)."""
        images = torch.stack([load_image(os.path.join(self.root, n), self.size) for n in self.names])
        scores = None if self.targets is None else torch.tensor(self.targets, dtype=torch.float32)
        return images, scores
