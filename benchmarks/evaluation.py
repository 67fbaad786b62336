"""Evaluation at dataset scale: peak memory against the number of images, and throughput of
one process against two under torchrun.

Memory: ``surgery.evaluate`` on a Dataset that makes each image when it is read (no file
I/O), every image scored and attacked (PGD-1 at 4/255), for each ``--images`` count, each
in a fresh process; the same on the images as one tensor for comparison. Goal: the
Dataset's peak resident memory flat in N (512 / 64 images <= 1.10x).

Processes: the same evaluate (PGD-``--steps`` on ``--process-images`` images) in one process
with one thread, then under ``torchrun --nproc_per_node 2`` with one thread each; the
ratio of images per second. Goal: >= 1.6x on two cores.

Layout: the same evaluate (PGD-``--steps``, ``--process-images`` images, two threads) in the
default memory layout and with ``channels_last=True``, alternated ``--repeats`` times in one
process; the median seconds of each, their ratio and the largest difference of AbsGain or R-Score.

    python benchmarks/evaluation.py [--model default] [--size 224 224] [--images 64 512] [--process-images 32]
        [--parts memory processes layout]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.data import Dataset

import surgery


class MadeImages(Dataset):
    """Image ``i`` is made from seed ``i`` when it is read, so memory shows what evaluate keeps."""

    def __init__(self, count: int, size: tuple[int, int]):
        self.count, self.size = count, tuple(size)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        image = torch.rand(3, *self.size, generator=torch.Generator().manual_seed(index))
        return image, float(index % 7)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def model(name: str) -> torch.nn.Module:
    return surgery.create_model(name, pretrained=name in surgery.list_models(pretrained=True)).eval()


def memory_worker(args) -> dict:
    """One evaluate in this process; the peak resident memory it added to the loaded model's."""
    torch.set_num_threads(args.threads)
    network = model(args.model)
    before = peak_mb()
    data = MadeImages(args.count, args.size)
    if args.tensor:  # the images held as one tensor, as evaluate took them before it streamed
        data = torch.stack([data[i][0] for i in range(len(data))]), torch.tensor([data[i][1] for i in range(len(data))])
    started = time.perf_counter()
    images, mos = data if args.tensor else (data, None)
    surgery.evaluate(network, images, mos, attacks="pgd-1", eps_grid=(4 / 255,), batch_size=8, progress=False)
    return {"images": args.count, "tensor": args.tensor, "peak MB": peak_mb(), "model MB": before,
            "seconds": time.perf_counter() - started}


def process_worker(args) -> dict:
    torch.set_num_threads(1)
    network = model(args.model)
    data = MadeImages(args.count, args.size)
    started = time.perf_counter()
    table = surgery.evaluate(network, data, attacks=f"pgd-{args.steps}", eps_grid=(4 / 255,), batch_size=4, progress=False)
    return {"seconds": time.perf_counter() - started, "summary": table.summaries[0]}


def run_worker(arguments: list[str], processes: int = 1) -> dict:
    script = [os.path.abspath(__file__), "--worker", *arguments]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *script]
    else:
        command = [sys.executable, *script]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--size", type=int, nargs=2, default=(224, 224))
    parser.add_argument("--images", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--process-images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="PGD steps of the throughput run")
    parser.add_argument("--threads", type=int, default=2, help="threads of the memory runs")
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs of each layout")
    parser.add_argument("--parts", nargs="+", choices=("memory", "processes", "layout"), default=["memory", "processes", "layout"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=("memory", "processes"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tensor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = memory_worker(args) if args.kind == "memory" else process_worker(args)
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps(result, default=float))
        return

    common = ["--model", args.model, "--size", *map(str, args.size)]
    if "memory" in args.parts:
        print("| images | input | peak MB | model MB | added MB | s |\n|---|---|---|---|---|---|")
        added = {}
        for tensor in (False, True):
            for count in args.images:
                extra = ["--tensor"] if tensor else []
                r = run_worker([*common, "--kind", "memory", "--count", str(count), "--threads", str(args.threads), *extra])
                added[tensor, count] = r["peak MB"] - r["model MB"]
                kind = "tensor" if tensor else "Dataset"
                print(f"| {count} | {kind} | {r['peak MB']:.0f} | {r['model MB']:.0f} | {added[tensor, count]:.0f} | {r['seconds']:.1f} |")
        low, high = min(args.images), max(args.images)
        for tensor, kind in ((False, "Dataset"), (True, "tensor")):
            total = {c: added[tensor, c] for c in (low, high)}
            print(f"{kind}: peak memory added at {high} / {low} images: {total[high] / total[low]:.2f}x")
    if "processes" in args.parts:
        work = [*common, "--kind", "processes", "--count", str(args.process_images), "--steps", str(args.steps)]
        one, two = run_worker(work, 1), run_worker(work, 2)
        same = one["summary"] == two["summary"]
        print(f"1 process: {one['seconds']:.1f} s, 2 processes: {two['seconds']:.1f} s for {args.process_images} images, "
              f"PGD-{args.steps}: {one['seconds'] / two['seconds']:.2f}x the throughput (tables identical: {same})")
    if "layout" in args.parts:
        layout_comparison(args)


def layout_comparison(args) -> None:
    """evaluate in the default layout and channels-last, alternated in one process."""
    torch.set_num_threads(args.threads)
    network = model(args.model)
    data = MadeImages(args.process_images, args.size)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    summaries = {}
    for _ in range(args.repeats):
        for channels_last in (False, True):
            started = time.perf_counter()
            table = surgery.evaluate(network, data, attacks=f"pgd-{args.steps}", eps_grid=(4 / 255,), batch_size=8,
                                     progress=False, channels_last=channels_last)
            seconds[channels_last].append(time.perf_counter() - started)
            summaries[channels_last] = table.summaries[0]
    plain, fast = (statistics.median(seconds[k]) for k in (False, True))
    # the gains, not the attacked images' rank correlations: random images saturate near the top score,
    # where rounding reorders them
    numbers = [k for k in summaries[False] if k.endswith(("abs_gain", "r_score"))]
    gap = max(abs(summaries[False][k] - summaries[True][k]) for k in numbers)
    print(f"default layout: {plain:.1f} s, channels_last=True: {fast:.1f} s for {args.process_images} images, "
          f"PGD-{args.steps}, {args.threads} threads: {plain / fast:.2f}x faster (largest AbsGain / R-Score difference {gap:.1e})")


if __name__ == "__main__":
    main()
