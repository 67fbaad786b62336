"""Replay of the paper's headline (SPEC §6): which attack makes its block look robust.

The default model at a rectangular input (``--size``, 384x512 by default, where the block's
pooling really shrinks the 12x16 map before the last stage), four models, one fine-tune
recipe (the paper comparison's, ``benchmarks/paper_tables.py``, at this size):

- ``original``: the default model, untouched;
- ``control``: fine-tune only;
- ``described``: the RobustBlock as the paper describes it (adaptive average pooling to
  min(H, W), 1x1 conv to C/2, Cayley with a learnable scale, trained) + fine-tune;
- ``paper-code``: the block as the paper's code builds it (``surgery.PAPER_CODE_BLOCK``:
  sliding max-pool, 3x3 valid conv to C/5, spectrum-normalised Cayley with scale 1,
  frozen at its random initialisation) + fine-tune of the rest.

Each is measured with three attacks over eps {2, 4, 6, 8, 10}/255 (AbsGainAUC, in units of
the training pseudo-MOS range): ``paper-pgd-1`` (the paper code's attack: a +10/255 start,
no projection, exceeds its budget), the paper's protocol with correct budgets (``pgd-1``,
``pgd-8``), and the strong attack (``apgd-K``, Auto-PGD inside the budget). Data: the
paper comparison's split of ../shared/data/nips2017 (DSS **pseudo-MOS**), its 224x224
images resized to ``--size``. Fine-tunes and attacked scores are cached under ``--cache``.

    python benchmarks/paper_replay.py [--size 384 512] [--attack-images 16] [--strong-steps 50]
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import torch
import torch.nn.functional as F

import surgery
from surgery.files import atomic_write_text
from surgery.zoo.default import DEFAULT_WEIGHTS

from paper_tables import add_data_arguments, attack_table, fine_tune, load_data, markdown, parse_with_data

VARIANTS = ("original", "control", "described", "paper-code")


def resized(data: dict, size: tuple[int, int]) -> dict:
    """Every (images, mos) pair of ``data`` at ``size``; indices (the attacked subset) as they are."""
    def resize(images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)

    return {key: (resize(value[0]), value[1]) if isinstance(value, tuple) else value for key, value in data.items()}


def build(variant: str, base: torch.nn.Module, size: tuple[int, int]) -> torch.nn.Module:
    model = copy.deepcopy(base)
    if variant == "described":
        return surgery.harden(model, input_size=(3, *size), inplace=True)
    if variant == "paper-code":
        return surgery.harden(model, input_size=(3, *size), inplace=True, **surgery.PAPER_CODE_BLOCK)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, eval_references=30, attack_images=16)
    parser.add_argument("--size", type=int, nargs=2, default=(384, 512), metavar=("H", "W"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--strong-steps", type=int, default=50, help="APGD iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=".cache/replay")
    parser.add_argument("--out", default="outputs/replay")
    args = parse_with_data(parser)
    started = time.time()
    size = tuple(args.size)
    data = resized(load_data(args), size)
    base = surgery.create_model("default", pretrained=True).eval()
    first_stage = torch.load(DEFAULT_WEIGHTS, weights_only=True)["first_stage"]
    attacks = ["paper-pgd-1", "pgd-1", "pgd-8", f"apgd-{args.strong_steps}"]
    rows = []
    for variant in args.variants:
        torch.manual_seed(args.seed)
        model = build(variant, base, size)
        epoch_s = None
        if variant != "original":
            folder = os.path.join(args.cache, f"{size[0]}x{size[1]}", "tune", variant)
            epoch_s = fine_tune(model, {}, data, first_stage, args.seed, folder, args)
        cache = os.path.join(args.cache, f"{size[0]}x{size[1]}", "eval")
        summary = attack_table(variant, model, data, cache, attacks).summaries[0]
        rows.append({"model": variant, "srocc": summary["srocc"], "plcc": summary["plcc"],
                     **{f"{a} abs_gain_auc": summary[f"{a} abs_gain_auc"] for a in attacks}, "epoch s": epoch_s})
        print(f"{variant}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[-1].items() if isinstance(v, float))
              + f" ({time.time() - started:.0f} s)")
    if "original" in args.variants:
        original = rows[args.variants.index("original")]
        for row in rows:
            for attack in attacks:
                row[f"{attack} x original"] = row[f"{attack} abs_gain_auc"] / original[f"{attack} abs_gain_auc"]
    report = [f"## Replay at {size[0]}x{size[1]} ({len(data['attack'][1])} attacked images, seed {args.seed})", "",
              markdown(rows), "", f"{time.time() - started:.0f} s in all"]
    atomic_write_text("\n".join(report) + "\n", os.path.join(args.out, "replay.md"))
    print("\n".join(report))


if __name__ == "__main__":
    main()
