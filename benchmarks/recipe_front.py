"""Moving the robust recipe's front, on validation only: candidate fine-tunes, each blended
over the keep grid and measured on the validation images, as ``robustify(target=...)``
measures them (:func:`surgery.calibration.calibrate_blend`).

A candidate is ``surgery.robustify(model, train, val, recipe="robust-strong", seed=s, ...)``
(the robust recipes' fine-tune, kept whole) with ``+``-joined changes: ``recipe`` (none),
``eps-E`` (consistency budget E/255), ``beta-B``, ``steps-K``, ``share-F`` (the defence's
settings, the others as the recipe's), ``epochs-N``, ``all`` (every parameter trains:
``parameters=list(model.parameters())``), ``blocks-N`` (the last N conv blocks and the head, the
recipe's rule with N for its 4), ``own`` (:class:`~surgery.defenses.OwnSpreadConsistencyTraining`:
the gap in the batch's own score spread), ``last`` (the last epoch is blended, not the best by
validation SROCC: the same fine-tune, ``select="last"``). Every keep of :data:`surgery.calibration.KEEP_GRID`
is scored on the 252 validation images (SROCC) and attacked on 16 of them (random-start
PGD-10 raising the score at each ``--eps``, every gain in the blend's own validation score
range); the table gives, per candidate, the most
robust keep whose validation SROCC keeps >= ``--target`` of the original's (the keep the
calibrated call would choose) and its gains as multiples of the original's. No test
reference is touched: what wins here is then measured on test by ``recipe_proof.py``.

Fine-tunes and calibrations are cached under ``--cache``: a run that stops continues.

    python benchmarks/recipe_front.py --candidates recipe all eps-8 beta-0.08 epochs-4
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

import surgery
from surgery.calibration import calibrate_blend, choose
from surgery.defenses import ConsistencyTraining, OwnSpreadConsistencyTraining
from surgery.files import atomic_write_text
from surgery.recipes import RECIPES

from paper_tables import add_data_arguments, data_tag, load_data, parse_with_data, spread_first

ATTACKED = 16  # validation images the calibration attacks (robustify's)

DEFENSE_KEYS = {"eps": "eps", "beta": "beta", "steps": "steps", "share": "fraction"}


def candidate_options(name: str, base, spread: float) -> dict:
    """The robustify keywords of candidate ``name`` (beyond recipe and seed)."""
    settings = dict(RECIPES["robust-strong"].record()["defense"])
    settings.pop("class"), settings.pop("alpha")  # alpha follows eps and steps: 2.5 eps / steps
    settings["eps"] = round(settings["eps"] * 255, 6)
    options: dict = {}
    defense = ConsistencyTraining
    for part in name.split("+"):
        key, _, value = part.partition("-")
        if part in ("recipe", "last"):
            continue
        if key in DEFENSE_KEYS and value:
            settings[DEFENSE_KEYS[key]] = float(value)
        elif key == "epochs" and value.isdigit():
            options["epochs"] = int(value)
        elif part == "all":
            options["parameters"] = list(base.parameters())
        elif part == "own":  # the gap in the batch's own score spread: squashing cannot lower the penalty
            defense = OwnSpreadConsistencyTraining
        elif key == "blocks" and value.isdigit():  # the recipe's rule with another count (the recipe: 4)
            own = dict(base.named_parameters())
            options["parameters"] = [own[n] for n in surgery.locate(base, input_size=(3, 224, 224)).trailing_parameters(int(value))]
        else:
            raise ValueError(
                f"candidate {name!r}: unknown part {part!r} (recipe, eps-E, beta-B, steps-K, share-F, epochs-N, all, blocks-N, own, last)"
            )
    options["defense"] = defense(
        eps=settings["eps"] / 255, steps=int(settings["steps"]), beta=settings["beta"], scale=spread, fraction=settings["fraction"]
    )
    return options


def tuned_candidate(name: str, base, data: dict, seed: int, cache: str):
    """``(fine-tuned model, its history)`` of candidate ``name`` (cached under ``cache/tune``)."""
    options = candidate_options(name, base, float(data["tune"][1].std()))
    digest = dataclasses.replace(RECIPES["robust-strong"], defense=lambda _: options["defense"],
                                 epochs=options.get("epochs", RECIPES["robust-strong"].epochs)).training_digest()
    parts = name.split("+")
    trained_as = "+".join(p for p in parts if p != "last") or "recipe"  # "last" trains nothing new
    folder = os.path.join(cache, "tune", f"{trained_as}-{digest}-{data_tag(data)}-s{seed}")
    return surgery.robustify(base, data["tune"], data["val"], recipe="robust-strong", seed=seed,
                             checkpoint_dir=folder, select="last" if "last" in parts else "best", **options)


def front(name: str, base, data: dict, seed: int, head: list[str], args) -> dict:
    """The candidate's fine-tune (cached) and its calibration grid at every ``--eps`` (cached).
    With ``--head``, the calibration measures the blends that keep the ``head`` modules' change
    whole too, on validation images attacked evenly spaced (without: the first ones, as before)."""
    suffix = "-head-spread" if args.head else ""
    path = os.path.join(args.cache, "front", f"{name}-{data_tag(data)}-s{seed}-{'-'.join(map(str, args.eps))}{suffix}.json")
    if os.path.isfile(path):
        with open(path) as file:
            return json.load(file)
    tuned, result = tuned_candidate(name, base, data, seed, args.cache)
    record = {"candidate": name, "seed": seed, "epoch s": float(np.mean([h["seconds"] for h in result.history])),
              "epoch": result.epoch, "grids": {}}
    for eps in args.eps:
        val = spread_first(data["val"], ATTACKED) if args.head else data["val"]
        calibration = calibrate_blend(base, tuned, val, args.target, eps=eps / 255, seed=seed, attack_images=ATTACKED, head=head)
        record["grids"][str(eps)] = {"original gain": calibration.val_gain_original, "original srocc": calibration.val_srocc_original,
                                     "grid": calibration.grid}
        print(f"{name} s{seed}, PGD-10 at {eps}/255:\n{calibration}", flush=True)
    atomic_write_text(json.dumps(record, indent=2), path)
    return record


def point(row: dict) -> tuple[float, float]:
    """(keep, the head's keep) of a grid row (rows cached before the head was measured: uniform)."""
    return row["keep"], row.get("head_keep", row["keep"])


def summary_row(record: dict, target: float, eps: list[float]) -> dict:
    """Per family of blends (uniform; where measured, the head kept whole) and over both (what
    the calibrated call chooses), the blend chosen by the first eps's gain and every eps's gain
    ratio there; and the whole fine-tune's."""
    row = {"candidate": record["candidate"], "seed": record["seed"], "epoch s": record["epoch s"],
           "epoch": record.get("epoch", record.get("best epoch"))}
    grids = {e: {point(r): r for r in record["grids"][str(e)]["grid"]} for e in eps}
    first = [{**r, "head_keep": point(r)[1]} for r in record["grids"][str(eps[0])]["grid"]]
    families = {"": [r for r in first if r["keep"] == r["head_keep"]],
                "head whole: ": [r for r in first if r["head_keep"] == 1.0 and r["keep"] < 1.0]}
    if families["head whole: "]:
        families["chosen: "] = first
    for label, rows in families.items():
        if not rows:
            continue
        chosen, met = choose(rows, target)
        row[f"{label}keep"] = f"{chosen['keep']:g}" + ("" if chosen["head_keep"] == chosen["keep"] else " (head 1)") if met else None
        row[f"{label}val SROCC kept"] = chosen["srocc_kept"] if met else None
        for e in eps:
            original = record["grids"][str(e)]["original gain"]
            row[f"{label}x at {e:g}/255"] = grids[e][point(chosen)]["val_gain"] / original if met else None
    for e in eps:
        row[f"whole: x at {e:g}/255"] = grids[e][(1.0, 1.0)]["val_gain"] / record["grids"][str(e)]["original gain"]
    row["whole: val SROCC kept"] = grids[eps[0]][(1.0, 1.0)]["srocc_kept"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, eval_references=50, attack_images=64)
    parser.add_argument("--candidates", nargs="+", default=["recipe"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--head", action="store_true",
                        help="also the blends that keep the pooled head's change whole (validation images attacked evenly spaced)")
    parser.add_argument("--eps", type=float, nargs="+", default=[4.0, 8.0], help="PGD-10 budgets, in 1/255")
    parser.add_argument("--cache", default=".cache/front")
    parser.add_argument("--out", default="outputs/front.md")
    args = parse_with_data(parser)
    started = time.time()
    data = load_data(args)
    base = surgery.create_model("default", pretrained=True).eval()
    head = surgery.locate(base, input_size=(3, 224, 224)).pooled_head() if args.head else []
    if args.head and not head:
        raise SystemExit("--head: the model has no layers on pooled features (locate(...).pooled_head() is empty)")
    rows = [summary_row(front(name, base, data, seed, head, args), args.target, args.eps)
            for name in args.candidates for seed in args.seeds]
    table = surgery.Table([], rows).to_markdown()
    atomic_write_text(f"## The recipe's front on validation (target {args.target:.0%})\n\n{table}\n", args.out)
    print(table)
    print(f"{time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
