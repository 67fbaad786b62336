"""Does an attack change the quality it is scored against? The pseudo-MOS of attacked images.

The models here learn a full-reference **pseudo-MOS** (DSS of a distorted image against its
pristine reference, :class:`surgery.data.SyntheticIQA`), so the quality of an attacked image
is measurable too: DSS(attacked, reference). A perturbation of a few /255 is itself a small
distortion. If it lowers the pseudo-MOS, part of what an attack lowering the score gains is
the model seeing a real loss of quality, which no defence should remove, and an attack
raising the score fools the model by more than its gain. This measures how much.

For each model (``--models``, zoo names with shipped weights) and budget (``--eps``, /255):
APGD-50 raising and lowering the score, and random sign noise of the same budget as the
non-adversarial control, on ``--attack-images`` held-out test images (recipe_proof.py's
split and images, evenly spaced). Model scores are put on the pseudo-MOS scale by the
least-squares line of pseudo-MOS on the model's score over the 1,050 clean test images, so a
score change and a pseudo-MOS change are in the same units. Per row, the means over the
images: the score change (on that scale), the pseudo-MOS change, and their difference, the
part of the change the image's quality does not explain.

    python benchmarks/attack_quality.py --data .cache/nips224 --labels .cache/nips224/labels-dss.pt
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import surgery
from surgery.attacks import APGD, scores
from surgery.data.synthetic import PSEUDO_MOS_METRICS
from surgery.files import atomic_write_text

from paper_tables import add_data_arguments, load_data, parse_with_data


def sign_noise(images: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """``images`` moved by +-eps in every pixel (signs drawn from ``seed``), clipped to [0, 1]."""
    signs = torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(seed)).to(images) * 2 - 1
    return (images + eps * signs).clamp(0, 1)


def on_pseudo_mos_scale(model, images: torch.Tensor, mos: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Slope and intercept of the least-squares line of pseudo-MOS on the model's score, and
    every image's score on that line."""
    measured = scores(model, images, 32).double()
    slope, intercept = np.polyfit(measured.numpy(), mos.double().numpy(), 1)
    return float(slope), float(intercept), measured * slope + intercept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, eval_references=50, attack_images=16)
    parser.add_argument("--models", nargs="+", default=["default", "default-robust"])
    parser.add_argument("--eps", type=float, nargs="+", default=[2, 4, 8], help="budgets, in 1/255")
    parser.add_argument("--steps", type=int, default=50, help="APGD steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/attack-quality.md")
    args = parse_with_data(parser)
    started = time.time()
    data = load_data(args)
    images, mos = data["attack"]
    references = data["attack_references"]
    pseudo_mos = PSEUDO_MOS_METRICS["dss"]
    with torch.no_grad():  # each attacked image against its own reference: its pseudo-MOS comes back
        if not torch.allclose(pseudo_mos(images, references).float(), mos, atol=1e-4):
            raise SystemExit("the attacked images' references do not give their pseudo-MOS back: pass --labels made for --data")
    rows = []
    for name in args.models:
        model = surgery.create_model(name, pretrained=True).eval()
        slope, intercept, on_scale = on_pseudo_mos_scale(model, *data["eval"])
        clean = on_scale[data["attack_subset"]]  # the attacked images are among the test images the line is fitted on
        for eps in args.eps:
            budget = eps / 255
            attacked = {"random sign noise": sign_noise(images, budget, args.seed)}
            for direction in ("up", "down"):
                attacked[f"APGD-{args.steps} {direction}"] = APGD(eps=budget, steps=args.steps, seed=args.seed)(
                    model, images, direction=direction)
            for attack, moved in attacked.items():
                score_change = scores(model, moved, 32).double() * slope + intercept - clean
                with torch.no_grad():
                    quality_change = pseudo_mos(moved, references).double() - mos.double()
                rows.append({"model": name, "eps /255": eps, "perturbation": attack,
                             "score change": float(score_change.mean()),
                             "pseudo-MOS change": float(quality_change.mean()),
                             "unexplained": float((score_change - quality_change).mean()),
                             "|unexplained| / |score change|": float((score_change - quality_change).abs().mean()
                                                                    / score_change.abs().mean().clamp_min(1e-12))})
            print(surgery.Table([], rows).to_markdown(), flush=True)
    report = (f"## Pseudo-MOS of attacked images ({len(images)} held-out test images; changes on the pseudo-MOS "
              f"scale, means over the images)\n\n{surgery.Table([], rows).to_markdown()}\n")
    atomic_write_text(report, args.out)
    print(report)
    print(f"{time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
