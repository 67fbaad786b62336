"""Moving the robust recipe's front, on validation only: candidate fine-tunes, each blended
over the keep grid and measured on the validation images, as ``robustify(target=...)``
measures them (:func:`surgery.calibration.calibrate_blend`).

A candidate is ``surgery.robustify(model, train, val, recipe="robust-strong", seed=s, ...)``
(``model``: ``--model``, a zoo name with shipped weights; the default model unless told)
(the robust recipes' fine-tune, kept whole) with ``+``-joined changes: ``recipe`` (none),
``eps-E`` (consistency budget E/255), ``beta-B``, ``steps-K``, ``share-F`` (the defence's
settings, the others as the recipe's), ``epochs-N``, ``all`` (every parameter trains:
``parameters=list(model.parameters())``), ``blocks-N`` (the last N conv blocks and the head, the
recipe's rule with N for its 4), ``own`` (:class:`~surgery.defenses.OwnSpreadConsistencyTraining`:
the gap in the batch's own score spread), ``bn-eval`` (every BatchNorm layer normalises by its
running statistics throughout the fine-tune, as at inference, its scale and shift still
trained: the consistency gap is then penalised on the function that is attacked and shipped,
not under the statistics of a batch of clean and attacked images together), ``split``
(:class:`SplitDirectionConsistency`: the inner attack raises half the attacked images' scores
and lowers the other half's), ``last`` / ``best`` (the last epoch is blended, or
the best by validation SROCC, instead of the recipe's ``select``: the same fine-tune). Every
blend the calibration measures (every keep of :data:`surgery.calibration.KEEP_GRID`, and the
head's change kept whole with the rest at 0..0.9) is scored on the 252 validation images
(SROCC) and attacked on 16 of them, evenly spaced (random-start PGD-10 at each ``--eps`` in
each of ``--directions``, raising and lowering the score by default, every gain in the blend's
own validation score range); the table gives, per family of blends and over both, the most
robust blend (by its worse direction) whose validation SROCC keeps >= ``--target`` of the
original's (over both: what the calibrated call chooses) and its gains per direction as
multiples of the original's. No test
reference is touched: what wins here is then measured on test by ``recipe_proof.py``.

Fine-tunes and calibrations are cached under ``--cache``/``--model``: a run that stops continues.

    python benchmarks/recipe_front.py --candidates recipe all eps-8 beta-0.08 epochs-2+best
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time
import types

import numpy as np
import torch
from torch import nn

import surgery
from surgery.calibration import calibrate_blend, choose
from surgery.defenses import ConsistencyTraining, OwnSpreadConsistencyTraining
from surgery.defenses.base import as_at_inference
from surgery.files import atomic_write_text
from surgery.recipes import RECIPES

from paper_tables import add_data_arguments, data_tag, load_data, parse_with_data

DEFENSE_KEYS = {"eps": "eps", "beta": "beta", "steps": "steps", "share": "fraction"}


class SplitDirectionConsistency(ConsistencyTraining):
    """Consistency training whose inner attack raises the scores of the first half of the
    attacked images and lowers the rest, instead of moving each away from its clean score in
    whichever direction its random start happens to point: lowering the score is the recipe's
    weak direction on two models of three, so it is trained on as often as raising."""

    def adversarial(self, score, images: torch.Tensor) -> torch.Tensor:
        rising = images.shape[0] // 2
        attack = self.attack()
        with as_at_inference(score):
            return torch.cat([attack.run(score, images[:rising].detach(), direction="up") if rising else images[:0],
                              attack.run(score, images[rising:].detach(), direction="down")])


def candidate_options(name: str, base, spread: float) -> dict:
    """The robustify keywords of candidate ``name`` (beyond recipe and seed)."""
    settings = dict(RECIPES["robust-strong"].record()["defense"])
    settings.pop("class"), settings.pop("alpha")  # alpha follows eps and steps: 2.5 eps / steps
    settings["eps"] = round(settings["eps"] * 255, 6)
    options: dict = {}
    defense = ConsistencyTraining
    for part in name.split("+"):
        key, _, value = part.partition("-")
        if part in ("recipe", "last", "best", "bn-eval"):
            continue
        if key in DEFENSE_KEYS and value:
            settings[DEFENSE_KEYS[key]] = float(value)
        elif key == "epochs" and value.isdigit():
            options["epochs"] = int(value)
        elif part == "all":
            options["parameters"] = list(base.parameters())
        elif part == "own":  # the gap in the batch's own score spread: squashing cannot lower the penalty
            defense = OwnSpreadConsistencyTraining
        elif part == "split":
            defense = SplitDirectionConsistency
        elif key == "blocks" and value.isdigit():  # the recipe's rule with another count (the recipe: 4)
            own = dict(base.named_parameters())
            options["parameters"] = [own[n] for n in surgery.locate(base, input_size=(3, 224, 224)).trailing_parameters(int(value))]
        else:
            raise ValueError(
                f"candidate {name!r}: unknown part {part!r} "
                "(recipe, eps-E, beta-B, steps-K, share-F, epochs-N, all, blocks-N, own, split, bn-eval, last, best)"
            )
    options["defense"] = defense(
        eps=settings["eps"] / 255, steps=int(settings["steps"]), beta=settings["beta"], scale=spread, fraction=settings["fraction"]
    )
    return options


def training(name: str, base, data: dict) -> tuple[dict, str, str]:
    """Candidate ``name``'s robustify keywords, the digest of what it trains and the epoch it returns."""
    options = candidate_options(name, base, float(data["tune"][1].std()))
    digest = dataclasses.replace(RECIPES["robust-strong"], defense=lambda _: options["defense"],
                                 epochs=options.get("epochs", RECIPES["robust-strong"].epochs)).training_digest()
    parts = name.split("+")
    select = "last" if "last" in parts else "best" if "best" in parts else RECIPES["robust-strong"].select
    return options, digest, select


def running_statistics(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm layer in eval mode for good: ``train()`` leaves them there."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            module.train = types.MethodType(lambda self, mode=True: self, module)
    return model


def tuned_candidate(name: str, base, data: dict, seed: int, cache: str):
    """``(fine-tuned model, its history)`` of candidate ``name`` (cached under ``cache/tune``)."""
    if "bn-eval" in name.split("+"):
        base = running_statistics(copy.deepcopy(base))
    options, digest, select = training(name, base, data)
    trained_as = "+".join(p for p in name.split("+") if p not in ("last", "best")) or "recipe"  # they train nothing new
    folder = os.path.join(cache, "tune", f"{trained_as}-{digest}-{data_tag(data)}-s{seed}")
    return surgery.robustify(base, data["tune"], data["val"], recipe="robust-strong", seed=seed,
                             checkpoint_dir=folder, select=select, **options)


def front(name: str, base, data: dict, seed: int, head: list[str], args) -> dict:
    """The candidate's fine-tune (cached) and its calibration grid at every ``--eps``, as
    ``robustify(target=)`` measures it, ``head`` the modules it may keep whole (cached, named by
    what trains and the epoch blended)."""
    _, digest, select = training(name, base, data)
    tag = f"{digest}-{select}-{data_tag(data)}-s{seed}-{'-'.join(map(str, args.eps))}-head-spread-{'-'.join(args.directions)}"
    path = os.path.join(args.cache, "front", f"{name}-{tag}.json")
    if os.path.isfile(path):
        with open(path) as file:
            return json.load(file)
    tuned, result = tuned_candidate(name, base, data, seed, args.cache)
    record = {"candidate": name, "seed": seed, "epoch s": float(np.mean([h["seconds"] for h in result.history])),
              "epoch": result.epoch, "grids": {}}
    for eps in args.eps:
        calibration = calibrate_blend(base, tuned, data["val"], args.target, eps=eps / 255, seed=seed, head=head,
                                      directions=args.directions)
        record["grids"][str(eps)] = {"original gain": calibration.val_gain_original, "original srocc": calibration.val_srocc_original,
                                     "grid": calibration.grid}
        print(f"{name} s{seed}, PGD-10 at {eps}/255:\n{calibration}", flush=True)
    atomic_write_text(json.dumps(record, indent=2), path)
    return record


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--cache``, which this script shares with recipe_gap.py."""
    parser.add_argument("--model", default="default", help="the zoo model the candidates fine-tune (shipped weights)")
    parser.add_argument("--cache", default=".cache/front", help="fine-tunes and calibrations go in <cache>/<model>")


def model_and_cache(args) -> tuple:
    """The model the candidates start from, in eval mode, and its cache folder."""
    return surgery.create_model(args.model, pretrained=True).eval(), os.path.join(args.cache, args.model)


def point(row: dict) -> tuple[float, float]:
    """(keep, the head's keep) of a grid row."""
    return row["keep"], row["head_keep"]


def summary_row(record: dict, target: float, eps: list[float]) -> dict:
    """Per family of blends (uniform; the head kept whole) and over both (what the calibrated
    call chooses), the blend chosen by the first eps's gains and every eps's gain ratio there,
    per direction; and the whole fine-tune's."""
    row = {"candidate": record["candidate"], "seed": record["seed"], "epoch s": record["epoch s"],
           "epoch": record["epoch"]}
    grids = {e: {point(r): r for r in record["grids"][str(e)]["grid"]} for e in eps}
    first = record["grids"][str(eps[0])]["grid"]
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
            for direction, x in ratios(record, e, grids[e][point(chosen)]).items():
                row[f"{label}{direction} x at {e:g}/255"] = x if met else None
    for e in eps:
        for direction, x in ratios(record, e, grids[e][(1.0, 1.0)]).items():
            row[f"whole: {direction} x at {e:g}/255"] = x
    row["whole: val SROCC kept"] = grids[eps[0]][(1.0, 1.0)]["srocc_kept"]
    return row


def ratios(record: dict, eps: float, grid_row: dict) -> dict[str, float]:
    """A blend's gain per direction as a multiple of the original's, at ``eps``."""
    original = record["grids"][str(eps)]["original gain"]
    return {d: grid_row["val_gain"][d] / original[d] for d in original}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, eval_references=50, attack_images=64)
    parser.add_argument("--candidates", nargs="+", default=["recipe"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--eps", type=float, nargs="+", default=[4.0, 8.0], help="PGD-10 budgets, in 1/255")
    parser.add_argument("--directions", nargs="+", choices=("up", "down"), default=["up", "down"],
                        help="the attack's directions (robustify's: both)")
    add_model_arguments(parser)
    parser.add_argument("--out", default="outputs/front.md")
    args = parse_with_data(parser)
    started = time.time()
    data = load_data(args)
    base, args.cache = model_and_cache(args)
    head = surgery.locate(base, input_size=(3, 224, 224)).pooled_head()  # as robustify finds it, once per run
    rows = [summary_row(front(name, base, data, seed, head, args), args.target, args.eps)
            for name in args.candidates for seed in args.seeds]
    table = surgery.Table([], rows).to_markdown()
    atomic_write_text(f"## The recipe's front on validation ({args.model}, target {args.target:.0%})\n\n{table}\n", args.out)
    print(table)
    print(f"{time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
