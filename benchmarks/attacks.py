"""Overhead of the attack loop: time of a k-step attack on a batch / (k x one forward + backward).

The attack loop should add almost nothing to the model's own cost (goal <= 1.10), for
the paper's PGD-k and for the strong attacks (PGD-k with random start, which also scores
its last iterate, and APGD, which scores its random start). The black-box Square attack
is held to Q forward passes without gradients for Q queries (goal <= 1.10). All are
measured in the same run, after warm-up, on the same model and batch.

    python benchmarks/attacks.py [--model linearity] [--batch 8] [--size 224 224] [--steps 1 8 50] [--square-queries 100]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import surgery
from surgery.attacks import APGD, PGD, Square, score_fn


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="linearity")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(224, 224))
    parser.add_argument("--steps", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--strong-steps", type=int, nargs="*", default=[8, 50], help="steps of PGD-k-rs and APGD-k")
    parser.add_argument("--square-queries", type=int, nargs="*", default=[100], help="queries of Square-Q")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hardened", action="store_true", help="attack the hardened model instead")
    args = parser.parse_args()
    torch.manual_seed(0)

    model = surgery.create_model(args.model).eval()
    if args.hardened:
        model = surgery.harden(model, input_size=(3, *args.size)).eval()
    images = torch.rand(args.batch, 3, *args.size)
    score = score_fn(model)
    model.requires_grad_(False)

    def forward_backward():
        x = images.clone().requires_grad_(True)
        torch.autograd.grad(score(x).sum(), x)

    def forward():
        with torch.no_grad():
            score(images)

    base = median_time(forward_backward, args.repeats)
    base_forward = median_time(forward, args.repeats) if args.square_queries else None
    print(f"{args.model}{' (hardened)' if args.hardened else ''}, batch {args.batch}, {args.size[0]}x{args.size[1]}, "
          f"threads {torch.get_num_threads()}")
    print("| attack | attack (s) | k x (forward + backward), or Q x forward (s) | ratio | goal |")
    print("|---|---|---|---|---|")
    attacks = [(f"PGD-{k}", PGD(eps=4 / 255, steps=k), k) for k in args.steps]
    for k in args.strong_steps:
        attacks += [(f"PGD-{k}-rs", PGD(eps=4 / 255, steps=k, random_start=True), k), (f"APGD-{k}", APGD(eps=4 / 255, steps=k), k)]
    attacks = [(label, attack, steps * base) for label, attack, steps in attacks]
    attacks += [(f"Square-{q}", Square(eps=4 / 255, queries=q, seed=0), q * base_forward) for q in args.square_queries]
    for label, attack, budget in attacks:
        took = median_time(lambda: attack(model, images), args.repeats)
        print(f"| {label} | {took:.3f} | {budget:.3f} | {took / budget:.2f} | <= 1.10 |")


if __name__ == "__main__":
    main()
