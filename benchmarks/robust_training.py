"""The cost of robust training: seconds per fine-tune epoch of consistency training variants
against a plain fine-tune, in one run, on the same model, data and trained parameters.

Two configurations: every parameter trained, and the robust recipe's (stages 4-6 and the
head of the default model; the frozen trunk needs no backward in a plain step, but the
inner attack differentiates through it). Variants are ``plain`` and ``K-steps[@F]``:
consistency training with a K-step inner attack on the fraction F of each batch
(``ConsistencyTraining(steps=K, fraction=F)``); a ``+cl`` suffix trains in the channels-last
layout (``finetune(channels_last=True)``). Each epoch is timed after a warm-up epoch;
the table gives seconds and the ratio to plain. Goals (issue: robust training at the cost
of a plain fine-tune): <= 2.5x with every parameter trained, <= 3.5x in the recipe's
configuration.

    python benchmarks/robust_training.py [--images 32] [--batch 8] [--size 224 224] [--variants plain 3 2@0.5 1@0.5 plain+cl 3+cl]
"""
from __future__ import annotations

import argparse
import copy

import torch

import surgery
from surgery.defenses import ConsistencyTraining
from surgery.zoo.default import trained_prefixes

RECIPE_FIRST_STAGE = 4  # the robust recipe trains stages 4-6 and the head of the default model


def defense(variant: str, spread: float) -> ConsistencyTraining | None:
    variant = variant.removesuffix("+cl")
    if variant == "plain":
        return None
    steps, _, fraction = variant.partition("@")
    return ConsistencyTraining(eps=4 / 255, steps=int(steps), beta=0.02, scale=spread, fraction=float(fraction or 1))


def epoch_seconds(base, images, targets, variant: str, config: str, batch: int) -> float:
    model = copy.deepcopy(base)
    params = [p for n, p in model.named_parameters() if config == "all" or n.startswith(trained_prefixes(RECIPE_FIRST_STAGE))]
    result = surgery.finetune(
        model, (images, targets), epochs=2, loss="mse", batch_size=batch, parameters=params,
        defense=defense(variant, float(targets.std())), channels_last=variant.endswith("+cl"), progress=False,
    )
    return result.history[-1]["seconds"]  # the second epoch: after warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(224, 224))
    parser.add_argument("--variants", nargs="+", default=["plain", "3", "3@0.5", "2@0.5", "1@0.5", "1"])
    parser.add_argument("--configs", nargs="+", choices=("all", "recipe"), default=["all", "recipe"])
    args = parser.parse_args()
    torch.manual_seed(0)
    base = surgery.create_model("default", pretrained=True)
    images = torch.rand(args.images, 3, *args.size)
    targets = torch.rand(args.images)
    print(f"{args.images} images of {args.size[0]}x{args.size[1]}, batch {args.batch}, {torch.get_num_threads()} threads\n")
    print("| trained | variant | s / epoch | x plain |\n|---|---|---|---|")
    for config in args.configs:
        plain = None
        for variant in args.variants:
            seconds = epoch_seconds(base, images, targets, variant, config, args.batch)
            plain = seconds if variant == "plain" else plain
            ratio = f"{seconds / plain:.2f}" if plain else "-"
            label = "every parameter" if config == "all" else "stages 4-6 + head"
            attack = variant.removesuffix("+cl")
            name = attack if attack == "plain" else f"{attack.partition('@')[0]} steps on {float(attack.partition('@')[2] or 1):.0%}"
            name += ", channels-last" if variant.endswith("+cl") else ""
            print(f"| {label} | {name} | {seconds:.1f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
