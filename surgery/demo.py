"""The demo behind ``make demo`` / ``surgery demo``: harden a zoo model on real photos.

It shows the surgery itself (Meleshin et al., §3): which blocks were found, where
the RobustBlock went, what it costs in parameters and time, and the measured
norm preservation of its orthogonal layer. The model has random weights (no
trained model ships yet), so its scores are not quality predictions.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

import surgery

_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")


def sample_images(size: tuple[int, int] = (224, 224)) -> torch.Tensor:
    """scikit-image's bundled photos, resized to ``size``: a (N, 3, H, W) batch in [0, 1]."""
    from skimage import data

    images = []
    for name in _PHOTOS:
        array = np.asarray(getattr(data, name)(), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
        images.append(F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(images).clamp(0, 1)


def _timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up (builds the cached orthogonal matrices)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def run(model_name: str = "linearity", **model_kwargs) -> None:
    torch.manual_seed(0)
    print(f"[1/4] building {model_name} {model_kwargs or ''} (random weights) ...")
    model = surgery.create_model(model_name, **model_kwargs).eval()
    images = sample_images()
    print(f"      {images.shape[0]} photos from scikit-image, {tuple(images.shape[-2:])}")

    print("[2/4] locating convolutional blocks ...")
    print("      " + str(surgery.locate(model)).replace("\n", "\n      "))

    print("[3/4] hardening: RobustBlock before the last block (position='auto', ortho='cayley') ...")
    start = time.perf_counter()
    robust = surgery.harden(model).eval()
    print(f"      done in {time.perf_counter() - start:.2f} s")
    print("      " + surgery.describe(robust).replace("\n", "\n      "))

    print("[4/4] running both models on the photos ...")
    with torch.no_grad():
        before, after = model(images), robust(images)
        t_before = _timed(lambda: model(images))
        t_after = _timed(lambda: robust(images))
    print("      scores (random weights, not quality): original " + np.array2string(before.numpy(), precision=3))
    print("                                            hardened " + np.array2string(after.numpy(), precision=3))
    print(f"      inference {t_before * 1000:.0f} ms -> {t_after * 1000:.0f} ms (x{t_after / t_before:.2f})")
    print("Next: fine-tune the hardened model briefly to recover its correlation with MOS (SPEC step 3).")
