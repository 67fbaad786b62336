"""The weights of ``create_model("default-robust", pretrained=True)``: exactly
``surgery.robustify(default, train, val, seed=0)`` on the documented data, and its model
card numbers.

The data are ``benchmarks/paper_tables.py``'s (the default model's pseudo-MOS split of
NIPS 2017: 1,264 training images, 252 validation images; the packed references of
``pack_nips.py``, as the proof's); the call uses the robust
recipe's whole configuration as it ships (``surgery.recipes.RECIPES["robust"]``: consistency
training, MSE, 4 epochs, the last returned, lr 1e-4, batch 8, the last 4 conv blocks and the
head trained, then the blend calibrated on the validation images to keep 99% of their SROCC):
``recipe_proof.py``'s ``default robust s0`` row, whose fine-tune checkpoint it shares
(``--tune-cache``; whichever runs second reuses it; both on the CPU, where this script runs: a
proof run with ``--device cuda`` trains in autocast, in a folder of its own). Only the trained parts are written
(stages 4-6, the head convolution and the MLP head), in float32, with the recipe's record,
the calibration's choice and a sha256 of the weights (tests check the record against the
recipe, the weights against the checksum). The card is measured on the model loaded back from
that file, on the held-out references, with the paper's attacks and APGD in both directions.

    python benchmarks/pack_nips.py --out .cache/nips224
    python benchmarks/train_default_robust.py --data .cache/nips224 --labels .cache/nips224/labels-dss.pt \
        --attack-images 16 --eval-references 30
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import surgery
from surgery.files import atomic_save
from surgery.fingerprint import state_fingerprint
from surgery.recipes import RECIPES
from surgery.zoo.default import DEFAULT_ROBUST_WEIGHTS, DEFAULT_WEIGHTS

from paper_tables import add_data_arguments, attack_table, load_data, parse_with_data
from recipe_proof import train_row, tune_folder

COLUMNS = ("srocc", "plcc", "pgd-1 abs_gain_auc", "pgd-8 abs_gain_auc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, eval_references=50, attack_images=100)
    parser.add_argument("--strong", nargs="*", default=["apgd-20"], help="strong attacks, run raising and lowering the score")
    parser.add_argument("--cache", default=".cache/paper", help="the card's attacks, shared with paper_tables.py")
    parser.add_argument("--tune-cache", default=".cache/proof", help="the fine-tune, shared with recipe_proof.py")
    parser.add_argument("--out", default=DEFAULT_ROBUST_WEIGHTS)
    args = parse_with_data(parser)
    started = time.time()
    data = load_data(args)
    base = surgery.create_model("default", pretrained=True).eval()
    first_stage = torch.load(DEFAULT_WEIGHTS, weights_only=True)["first_stage"]
    model, result = train_row("robust", base, data, 0, tune_folder(args.tune_cache, "default", "robust", data, 0))
    model.eval()
    print(result.calibration)
    state = {k: v.float() for k, v in model.trained_state(first_stage).items()}  # float32: exactly the measured model
    atomic_save(
        {
            "state_dict": state, "first_stage": first_stage, "score_range": tuple(model.score_range),  # robustify's own range
            "recipe": RECIPES["robust"].record(), "blend_keep": result.calibration.blend_keep,
            "sha256": state_fingerprint(state),
        },
        args.out,
    )
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB) after {time.time() - started:.0f} s")

    shipped = surgery.create_model("default").load_imagenet().load_trained(args.out).eval()
    eval_cache = os.path.join(args.cache, "eval")
    rows = []
    # under the comparison's names, whose cached attacks on the same weights are reused
    for name, candidate, compared_as in (("default", base, "original"), ("default-robust", shipped, "robust")):
        summary = attack_table(compared_as, candidate, data, eval_cache, strong=args.strong).summaries[0]
        strong = [f"{a}{d} abs_gain_auc" for a in args.strong for d in ("", " down")]
        rows.append({"model": name, **{k: summary[k] for k in (*COLUMNS, *strong)}})
    print(surgery.Table([], rows).to_markdown())
    print(f"{time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
