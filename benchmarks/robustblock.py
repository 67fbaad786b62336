"""Cost of the RobustBlock: hardened / original time for inference and a training step.

The paper's setting (Meleshin et al., Table 1): Linearity (ResNet-50) at 498x664,
RobustBlock before the last stage (input 1024x32x42, pooled to 32x32). The paper's
own block took inference 31.7 s -> 89.7 s (x2.83) and a training epoch
100.7 s -> 181.8 s (x1.81) on an A100. Goals here: inference <= x1.10, training
step <= x1.30, and what the block keeps between inference calls (Cayley: its per-frequency
matrices; AOC / AOL: their kernel) no more than the original's weights. Both models are timed
in the same run, alternating, after warm-up.

    python benchmarks/robustblock.py [--batch 1 8] [--train-batch 8 16] [--repeats 3] [--ortho cayley] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import surgery


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(step_original, step_hardened, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of each step, measured alternately after one warm-up each."""
    step_original(), step_hardened()
    original, hardened = [], []
    for _ in range(repeats):
        original.append(timed(step_original, device))
        hardened.append(timed(step_hardened, device))
    return statistics.median(original), statistics.median(hardened)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--height", type=int, default=498)
    parser.add_argument("--width", type=int, default=664)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="inference batch sizes")
    parser.add_argument("--train-batch", type=int, nargs="*", default=[8, 16], help="training batch sizes (none: inference only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ortho", default="cayley")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    original = surgery.create_model("linearity", arch=args.arch).to(device)
    size = (3, args.height, args.width)
    hardened = surgery.harden(original, ortho=args.ortho, input_size=size)
    print(surgery.describe(hardened, measure=False))
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}")

    rows = []
    for model in (original, hardened):
        model.eval().requires_grad_(False)
    for batch in args.batch:
        images = torch.rand(batch, *size, device=device)

        def infer(model, images=images):
            def step():
                with torch.no_grad():
                    model(images)

            return step

        rows.append((f"inference, batch {batch}", *compare(infer(original), infer(hardened), args.repeats, device), 1.10))

    for batch in args.train_batch:
        train_images = torch.rand(batch, *size, device=device)
        targets = torch.rand(batch, device=device)

        def train(model, train_images=train_images, targets=targets):
            model.train().requires_grad_(True)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

            def step():
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.mse_loss(model(train_images), targets)
                loss.backward()
                optimizer.step()

            return step

        rows.append((f"training step, batch {batch}", *compare(train(original), train(hardened), args.repeats, device), 1.30))

    kept = sum(m.cache_bytes() for m in hardened.modules() if isinstance(m, surgery.RobustBlock))
    weights = sum(t.nbytes for t in original.state_dict().values())
    print(f"\nLinearity ({args.arch}) at {args.height}x{args.width}, RobustBlock ({args.ortho}) before the last stage")
    print(f"kept by the block between inference calls: {kept / 1e6:.1f} MB (the original's weights: {weights / 1e6:.1f} MB)")
    print("| measurement | original (s) | hardened (s) | ratio | goal |")
    print("|---|---|---|---|---|")
    for name, o, h, goal in rows:
        print(f"| {name} | {o:.3f} | {h:.3f} | {h / o:.2f} | <= {goal:.2f} |")


if __name__ == "__main__":
    main()
