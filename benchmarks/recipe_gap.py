"""Where a robust fine-tune's robustness and SROCC go, on training and validation images only:
two diagnostics that say which change of the recipe could move its front.

1. **Robust generalisation gap**: random-start PGD-10 at 4/255 raising the score of 16 training
   images and of 16 validation images (evenly spaced, so from many references), each model's
   gain in the range of its own scores on that set (:func:`surgery.calibration.calibrate_blend`,
   as ``robustify(target=)`` measures), for the original, the fine-tune kept whole and its
   blend at ``--keep``. A fine-tune far harder to fool on the images it trained on than on
   held-out ones is short of data (Schmidt et al. 2018; Rice et al. 2020): more images for the
   consistency term (it needs no labels) should help. No gap: more data will not.
2. **SROCC by distortion**: validation SROCC within each distortion (blur, noise, JPEG,
   contrast) and over all, for the same models: which distortions the consistency term costs.
   Noise at a few /255 is the distortion the attacks look like.

Candidates are ``recipe_front.py``'s (the same names, ``--model``, fine-tunes and cache).

    python benchmarks/recipe_gap.py --data .cache/nips224 --labels .cache/nips224/labels-dss.pt --candidates epochs-4+last
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import surgery
from surgery import metrics
from surgery.blending import blend
from surgery.calibration import calibrate_blend
from surgery.files import atomic_write_text
from surgery.scoring import scores

from paper_tables import add_data_arguments, load_data, parse_with_data
from recipe_front import add_model_arguments, model_and_cache, tuned_candidate


def gains(base, tuned, data, keep: float, count: int, seed: int) -> dict:
    """PGD-10 gains (raising the score) of the original, the blend at ``keep`` and the whole fine-tune, and the SROCCs."""
    calibration = calibrate_blend(base, tuned, data, 0.99, keeps=(keep, 1.0), attack_images=count, seed=seed, directions=("up",))
    at = {r["keep"]: r for r in calibration.grid}
    return {"original gain": calibration.val_gain_original["up"], "original srocc": calibration.val_srocc_original,
            "keep gain": at[keep]["val_gain"]["up"], "keep srocc": at[keep]["val_srocc"],
            "whole gain": at[1.0]["val_gain"]["up"], "whole srocc": at[1.0]["val_srocc"]}


def by_distortion(predicted: torch.Tensor, labels: torch.Tensor, kinds: list[str]) -> dict:
    """SROCC of the ``predicted`` scores within each distortion and over all."""
    labels = labels.double()
    result = {"all": metrics.srocc(predicted, labels)}
    for kind in sorted(set(kinds) - {"pristine"}):
        chosen = torch.tensor([k == kind for k in kinds])
        if int(chosen.sum()) >= 3:  # a rank correlation of fewer says nothing
            result[kind] = metrics.srocc(predicted[chosen], labels[chosen])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, eval_references=50, attack_images=64)
    parser.add_argument("--candidates", nargs="+", default=["epochs-4+last"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--keep", type=float, default=0.4, help="the blend measured beside the whole fine-tune")
    parser.add_argument("--attacked", type=int, default=16, help="images attacked on each set")
    add_model_arguments(parser)
    parser.add_argument("--out", default="outputs/recipe-gap.md")
    args = parse_with_data(parser)
    started = time.time()
    data = load_data(args)
    base, args.cache = model_and_cache(args)
    gap_rows, distortion_rows = [], []
    for name in args.candidates:
        for seed in args.seeds:
            tuned, _ = tuned_candidate(name, base, data, seed, args.cache)
            tuned.eval()
            for split in ("tune", "val"):
                measured = gains(base, tuned, data[split], args.keep, args.attacked, seed)
                gap_rows.append({
                    "candidate": name, "seed": seed, "images": "training" if split == "tune" else "validation",
                    "original gain": measured["original gain"],
                    f"keep {args.keep:g}: x": measured["keep gain"] / measured["original gain"],
                    f"keep {args.keep:g}: SROCC kept": measured["keep srocc"] / measured["original srocc"],
                    "whole: x": measured["whole gain"] / measured["original gain"],
                    "whole: SROCC kept": measured["whole srocc"] / measured["original srocc"],
                })
            kept = blend(copy.deepcopy(tuned), base, args.keep)
            for label, model in (("original", base), (f"keep {args.keep:g}", kept), ("whole", tuned)):
                srocc = by_distortion(scores(model, data["val"][0], 32), data["val"][1], data["kinds"]["val"])
                distortion_rows.append({"candidate": name, "seed": seed, "model": label, **srocc})
            print(surgery.Table([], gap_rows).to_markdown(), flush=True)
    report = ("## Robust generalisation gap (PGD-10-rs at 4/255, own range; x: gain as a multiple of the original's)\n\n"
              f"{surgery.Table([], gap_rows).to_markdown()}\n\n## Validation SROCC by distortion\n\n"
              f"{surgery.Table([], distortion_rows).to_markdown()}\n")
    atomic_write_text(report, args.out)
    print(report)
    print(f"{time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
