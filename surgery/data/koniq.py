"""KonIQ-10k (Hosu et al., IEEE TIP 2020): 10,073 in-the-wild images with MOS, the
dataset of Meleshin et al.'s main tables (SPEC §4).

Reads the real score table (``koniq10k_distributions_sets.csv``: image_name, rating
distribution c1..c5, c_total, MOS, SD, set) and the images beside it (1024x768,
resized to 498x664 as for Linearity). Splits: the table's own training /
validation / test sets, or the paper's random 70/10/20 split with a seed.
"""
from __future__ import annotations

import csv
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .folder import load_image

__all__ = ["KonIQ10k", "koniq_split", "KONIQ_SIZE"]

KONIQ_SIZE = (498, 664)
_OFFICIAL = {"train": "training", "val": "validation", "test": "test"}


def koniq_split(csv_path: str | os.PathLike, split: str = "train", mode: str = "official", seed: int = 0) -> tuple[list[str], list[float]]:
    """(image names, MOS) of one split: ``mode="official"`` uses the table's set column,
    ``"paper"`` a seeded random 70/10/20 split; ``split="all"`` returns every image."""
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"KonIQ-10k score table {os.fspath(csv_path)!r} does not exist")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first column name
        rows = list(csv.DictReader(f))
    missing = {"image_name", "MOS", "set"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{os.fspath(csv_path)!r} is not the KonIQ-10k table: no column(s) {sorted(missing)}")
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be 'train', 'val', 'test' or 'all', got {split!r}")
    if mode not in ("official", "paper"):
        raise ValueError(f"mode must be 'official' or 'paper', got {mode!r}")
    if split == "all":
        chosen = rows
    elif mode == "official":
        chosen = [r for r in rows if r["set"] == _OFFICIAL[split]]
    else:
        order = np.random.default_rng(seed).permutation(len(rows))
        bounds = {"train": (0, 0.7), "val": (0.7, 0.8), "test": (0.8, 1.0)}[split]
        lo, hi = (int(round(b * len(rows))) for b in bounds)
        chosen = [rows[i] for i in sorted(order[lo:hi])]
    return [r["image_name"] for r in chosen], [float(r["MOS"]) for r in chosen]


class KonIQ10k(Dataset):
    """KonIQ-10k images (``root/<image_name>``) with MOS, resized to ``size``."""

    def __init__(
        self,
        root: str | os.PathLike,
        csv_path: str | os.PathLike,
        split: str = "train",
        mode: str = "official",
        size: tuple[int, int] = KONIQ_SIZE,
        seed: int = 0,
    ):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"KonIQ-10k image folder {os.fspath(root)!r} does not exist")
        self.root, self.size = os.fspath(root), tuple(size)
        self.names, self.mos = koniq_split(csv_path, split, mode, seed)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image(os.path.join(self.root, self.names[index]), self.size)
        return image, torch.tensor(self.mos[index], dtype=torch.float32)
