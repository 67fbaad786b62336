"""The demo behind ``make demo`` / ``surgery demo``: the whole method on the default model.

Runs offline, without ../shared: scikit-image's bundled photos become a small
synthetic-distortion set labelled with DSS pseudo-MOS (left halves of the photos for
the fine-tune, right halves for evaluation). The default model is scored, attacked
(PGD-1, PGD-8, UAP, stAdv), hardened (RobustBlock + l2 pruning + a short fine-tune,
Meleshin et al. §3), attacked again, and both are reported side by side with plots.
The numbers are a demonstration on a handful of images, not a benchmark.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.nn.functional as F

import surgery

_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def sample_images(size: tuple[int, int] = (224, 224), names: tuple[str, ...] = _PHOTOS) -> torch.Tensor:
    """scikit-image's bundled photos, resized to ``size``: a (N, 3, H, W) batch in [0, 1]."""
    return torch.cat([_photo(name, size) for name in names])


def _photo(name: str, size: tuple[int, int], half: int | None = None) -> torch.Tensor:
    """One photo resized to ``size``; ``half`` 0 or 1 takes its left or right half first."""
    from skimage import data

    array = np.asarray(getattr(data, name)(), dtype=np.float32)[..., :3] / 255.0
    if half is not None:
        width = array.shape[1] // 2
        array = np.ascontiguousarray(array[:, half * width : (half + 1) * width])
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def _halves(size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right halves of every photo: disjoint pixels for fine-tuning and evaluation."""
    return tuple(torch.cat([_photo(name, size, half) for name in _PHOTOS]) for half in (0, 1))


def _say(step: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:5.0f} s] {step}", flush=True)


def run(out: str = "outputs/demo", attack_images: int = 24) -> surgery.Table:
    from .data import SyntheticIQA
    from .report import plot_curves, plot_tradeoff

    torch.manual_seed(0)
    started = time.perf_counter()
    _say("loading the default model (EfficientNet-Lite0 + head, trained on pseudo-MOS)", started)
    model = surgery.create_model("default", pretrained=True).eval()

    _say("building distorted sets from scikit-image photos, labelled with DSS pseudo-MOS", started)
    left, right = _halves((224, 224))
    tune_set = SyntheticIQA(left, metric="dss")
    test_set = SyntheticIQA(right, metric="dss")
    images = torch.stack([test_set[i][0] for i in range(len(test_set))])
    mos = test_set.labels
    print(f"         fine-tune set {len(tune_set)} images, evaluation set {len(images)} images")

    _say("hardening: RobustBlock before the last stage, 10% l2 pruning, then a short fine-tune", started)
    hardened = surgery.harden(model, prune="l2", amount=0.10)
    print("         " + surgery.describe(hardened).replace("\n", "\n         "))
    tune_images = torch.stack([tune_set[i][0] for i in range(len(tune_set))])
    # no validation set: choosing the epoch on the evaluation images would flatter the result
    surgery.finetune(hardened, (tune_images, tune_set.labels), epochs=3, lr=1e-4, loss="mse", batch_size=16, progress=False)
    hardened.eval()

    _say(f"attacking both models on {attack_images} images (PGD-1, PGD-8 at eps 2, 6, 10 /255; UAP; stAdv)", started)
    pick = torch.linspace(0, len(images) - 1, attack_images).long()
    subset, subset_mos = images[pick], mos[pick]
    tables = []
    for name, candidate in (("default", model), ("default+ours", hardened)):
        clean = surgery.evaluate(candidate, images, mos, attacks=[], score_range=model.score_range, name=name, progress=False)
        attacked = surgery.evaluate(
            candidate, subset, subset_mos, attacks=["pgd-1", "pgd-8", "uap", "stadv"], eps_grid=(2 / 255, 6 / 255, 10 / 255),
            score_range=model.score_range, name=name, progress=False,
        )
        summary = {**attacked.summaries[0], **{k: clean.summaries[0][k] for k in ("srocc", "plcc", "krocc")}, "n": len(images)}
        tables.append(surgery.Table(attacked.rows, [summary]))
        _say(f"{name}: SROCC {summary['srocc']:.3f}, PGD-1 AbsGain AUC {summary['pgd-1 abs_gain_auc']:.3f}", started)
    table = tables[0] + tables[1]

    os.makedirs(out, exist_ok=True)
    table.write(os.path.join(out, "results.md"))
    table.write(os.path.join(out, "results.csv"))
    plot_curves(table, os.path.join(out, "abs_gain_vs_eps.png"))
    plot_tradeoff(table, os.path.join(out, "tradeoff.png"))
    print()
    print(table.to_markdown())
    print()
    _say(f"done: table and plots in {out}/ (pseudo-MOS, a few images: a demonstration, not a benchmark)", started)
    return table
