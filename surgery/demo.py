"""The demo behind ``make demo`` / ``surgery demo``: the whole method on the default model.

Runs offline, without ../shared: scikit-image's bundled photos become a small
synthetic-distortion set labelled with DSS pseudo-MOS (left halves of the photos for
the fine-tune, right halves for evaluation). The default model is scored and attacked
(PGD-1, PGD-8, APGD, UAP, stAdv), hardened with the paper's recipe (``surgery.robustify(model, recipe="paper")``: RobustBlock
+ l2 pruning + a short fine-tune, Meleshin et al. §3) and compared, under the same attacks,
with the shipped ``default-robust`` model (the robust recipe: consistency training, whose
fine-tune takes longer than a demo, then the blend back toward the original;
``benchmarks/train_default_robust.py`` makes it). The
three are reported side by side with plots.
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

    tune = (torch.stack([tune_set[i][0] for i in range(len(tune_set))]), tune_set.labels)
    _say(f"surgery.robustify(model, recipe='paper'): {surgery.RECIPES['paper'].description}", started)
    # no validation set: choosing the epoch on the evaluation images would flatter the result
    paper, _ = surgery.robustify(model, tune, recipe="paper", epochs=3, lr=1e-4, loss="mse", batch_size=16, progress=False)
    # the robust recipe's fine-tune (several attack steps per batch) takes longer than a demo:
    # its result on the default model ships, made by benchmarks/train_default_robust.py
    _say("loading default-robust: the default model after surgery.robustify(model, recipe='robust')", started)
    robust = surgery.create_model("default-robust", pretrained=True).eval()
    candidates = {"default": model, "default+paper": paper.eval(), "default-robust": robust}

    pick = torch.linspace(0, len(images) - 1, attack_images).long()
    attacks = ["pgd-1", "pgd-8", "apgd-10", "uap", "stadv"]
    _say(f"attacking the models on {attack_images} images ({', '.join(attacks)}; eps 2, 6, 10 /255)", started)
    tables = []
    for name, candidate in candidates.items():
        tables.append(surgery.evaluate(
            candidate, images, mos, attacks=attacks, eps_grid=(2 / 255, 6 / 255, 10 / 255), attack_subset=pick,
            score_range="evaluated", name=name, progress=False,  # each model's own range: a squash is no defence
        ))
        summary = tables[-1].summaries[0]
        _say(f"{name}: SROCC {summary['srocc']:.3f}, PGD-1 AbsGain AUC {summary['pgd-1 abs_gain_auc']:.3f}, "
             f"APGD-10 {summary['apgd-10 abs_gain_auc']:.3f}", started)
    table = sum(tables[1:], tables[0])

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
