"""NIPS 2017 adversarial competition dev set: 299x299 photos without MOS, the second
attack set of Meleshin et al. (SPEC §4; results averaged 2:1 with KonIQ-10k).

Reads ``images.csv`` (ImageId, URL, ..., License, Author) and ``images/<ImageId>.png`` (or
the same name with another image extension, e.g. a lossless WebP copy).
"""
from __future__ import annotations

import csv
import os

import torch
from torch.utils.data import Dataset

from .folder import IMAGE_EXTENSIONS, load_image

__all__ = ["NIPS2017"]


class NIPS2017(Dataset):
    """Images of the NIPS 2017 dev set, resized to ``size`` (299x299 natively).

    ``ids`` selects a subset by ImageId; ``attribution(i)`` gives licence and author.
    """

    def __init__(self, root: str | os.PathLike, size: tuple[int, int] = (299, 299), ids: list[str] | None = None):
        root = os.fspath(root)
        table = os.path.join(root, "images.csv")
        if not os.path.isfile(table):
            raise FileNotFoundError(f"NIPS 2017 table {table!r} does not exist (expected root/images.csv and root/images/)")
        with open(table, newline="", encoding="utf-8-sig") as f:
            rows = {r["ImageId"]: r for r in csv.DictReader(f) if r.get("ImageId")}
        files: dict[str, str] = {}
        for name in sorted(os.listdir(os.path.join(root, "images"))):
            stem, extension = os.path.splitext(name)
            if extension.lower() in IMAGE_EXTENSIONS:
                if stem in files:
                    raise ValueError(f"image id {stem!r} has two files in {root!r}/images: {files[stem]!r} and {name!r}")
                files[stem] = name
        wanted = sorted(files.keys() & rows.keys()) if ids is None else list(ids)
        unknown = [i for i in wanted if i not in rows or i not in files]
        if unknown:
            raise ValueError(f"image ids not in {root!r}: {unknown[:5]}")
        self.root, self.size, self.ids, self.rows, self.files = root, tuple(size), wanted, rows, files

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image(os.path.join(self.root, "images", self.files[self.ids[index]]), self.size)

    def attribution(self, index: int) -> str:
        row = self.rows[self.ids[index]]
        return f"{row.get('Author', '?')} ({row.get('License', '?')})"
