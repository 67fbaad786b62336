"""The weights of ``create_model("default-robust", pretrained=True)``: the default model
fine-tuned with ``surgery.robustify``'s robust recipe (consistency training, then the
blend back toward the original), and its model card numbers.

The model is the paper comparison's ``blend-<keep>+trades-<beta>`` row at seed 0 (same
data, steps, learning rate and trained parts as every variant of
``benchmarks/paper_tables.py``; the two scripts share their cache, so whichever runs
second reuses the fine-tune and the attacks). Only the trained parts are written (stages
4-6, the head convolution and the MLP head), as for the default model but in float32, so
the shipped model is exactly the one measured. The card is measured on the model loaded
back from that file, on the held-out references, with the paper's attacks and APGD in both
directions.

    python benchmarks/train_default_robust.py --attack-images 16 --eval-references 30

(``--lr`` defaults to 1e-4 here, the learning rate of ``surgery.finetune`` and so of
``robustify``; run the comparison with ``--lr 1e-4`` to share the fine-tune.)
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import surgery
from surgery.files import atomic_save
from surgery.recipes import RECIPES
from surgery.zoo.default import DEFAULT_ROBUST_WEIGHTS, DEFAULT_WEIGHTS

from paper_tables import add_data_arguments, add_recipe_arguments, attack_table, build, fine_tune, load_data, parse_with_data, tune_folder

COLUMNS = ("srocc", "plcc", "pgd-1 abs_gain_auc", "pgd-8 abs_gain_auc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, eval_references=50, attack_images=100)
    add_recipe_arguments(parser)
    parser.add_argument("--cache", default=".cache/paper", help="shared with paper_tables.py")
    parser.add_argument("--out", default=DEFAULT_ROBUST_WEIGHTS)
    parser.add_argument("--blend", type=float, default=RECIPES["robust"].blend, help="fraction of the fine-tune's change kept")
    parser.set_defaults(lr=1e-4)  # finetune's default, which robustify uses
    args = parse_with_data(parser)
    started = time.time()
    data = load_data(args)
    base = surgery.create_model("default", pretrained=True).eval()
    args.train_from = torch.load(DEFAULT_WEIGHTS, weights_only=True)["first_stage"]

    torch.manual_seed(0)
    trained = f"trades-{args.trades_beta:g}"  # the comparison's rows for this beta and blend: their work is reused
    variant = f"blend-{args.blend:g}+{trained}"
    model, options = build(trained, base, data, args)
    fine_tune(model, options, data, args.train_from, 0, tune_folder(trained, args), args)
    surgery.blend(model, base, args.blend)
    atomic_save(
        {
            # float32: the shipped model is the measured one, weight for weight
            "state_dict": {k: v.float() for k, v in model.trained_state(args.train_from).items()},
            "first_stage": args.train_from,
            "score_range": tuple(base.score_range),
            "recipe": {
                "name": "robust", "beta": args.trades_beta, "eps": args.trades_eps / 255, "steps": args.trades_steps,
                "blend": args.blend,
            },
        },
        args.out,
    )
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB) after {time.time() - started:.0f} s")

    shipped = surgery.create_model("default").load_imagenet().load_trained(args.out).eval()
    eval_cache = os.path.join(args.cache, "eval")
    rows = []
    # under the comparison's names, whose cached attacks on the same weights are reused
    for name, candidate, compared_as in (("default", base, "original"), ("default-robust", shipped, variant)):
        summary = attack_table(compared_as, candidate, data, base.score_range, eval_cache, strong=args.strong).summaries[0]
        strong = [f"{a}{d} abs_gain_auc" for a in args.strong for d in ("", " down")]
        rows.append({"model": name, **{k: summary[k] for k in (*COLUMNS, *strong)}})
    print(surgery.Table([], rows).to_markdown())
    print(f"{time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
