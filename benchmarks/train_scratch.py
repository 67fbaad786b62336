"""Train ``create_model("resnet18-scratch")`` from a random initialisation on the default
model's data, with ``surgery.finetune`` (resumable, best epoch by validation SROCC).

Data: the NIPS 2017 dev images at 224x224 with the default model's distortions, DSS
**pseudo-MOS** and split (70/10/20 by reference, seed 0; ``benchmarks/train_default.py``).
Training: every parameter, on random ``--crop`` x ``--crop`` crops (the distortions cover the
whole image, so a crop keeps its label and its artefacts at full resolution) with their
corners on multiples of ``--crop-grid`` pixels (the network's stride, 32: a crop then meets
JPEG's 8x8 blocks where a whole image does), flipped at random; MSE on z-scored labels,
AdamW (lr ``--lr``, weight decay ``--weight-decay``), cosine schedule, batch ``--batch``;
validation and test score the whole images. The z-scoring is
folded back into the last layer so the model outputs pseudo-MOS. The weights are written in
float16 and the test numbers (SROCC / PLCC on the 120 held-out references) are measured on
the model loaded back from the file; the file records the settings and a sha256 of the weights
(tests check the weights against it).

    python benchmarks/train_scratch.py [--epochs 16] [--crop 128] [--cache .cache/scratch] [--out surgery/zoo/weights/resnet18-scratch.pt]
    python benchmarks/train_scratch.py --device cuda --workers 8     # on a GPU machine
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.data import Dataset

import surgery
from surgery import metrics
from surgery.data import NIPS2017, SyntheticIQA
from surgery.files import atomic_save
from surgery.fingerprint import state_fingerprint
from surgery.scoring import scores
from surgery.zoo.scratch import SCRATCH_WEIGHTS, load_scratch_weights

from recipe_gap import by_distortion
from train_default import SHARED


class Standardised(Dataset):
    """``(image, (score - mean) / std)`` of a subset; with ``crop``, a random ``crop`` x ``crop``
    window of the image whose corner lies on a multiple of ``grid`` pixels, flipped left-right
    at random."""

    def __init__(self, subset, mean: float, std: float, crop: int | None, grid: int = 1):
        self.subset, self.mean, self.std, self.crop, self.grid = subset, mean, std, crop, grid

    def __len__(self) -> int:
        return len(self.subset)

    def __getitem__(self, index: int):
        image, score = self.subset[index]
        if self.crop is not None:
            top, left = (self.grid * int(torch.randint(0, (side - self.crop) // self.grid + 1, ())) for side in image.shape[-2:])
            image = image[:, top : top + self.crop, left : left + self.crop]
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        return image, (score - self.mean) / self.std

    @property
    def targets(self) -> torch.Tensor:
        labels = self.subset.dataset.labels[self.subset.indices]
        return (labels - self.mean) / self.std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=SHARED)
    parser.add_argument("--labels", default=".cache/default/labels-dss.pt", help="pseudo-MOS cache (shared with train_default.py)")
    parser.add_argument("--references", type=int, default=600, help="fewer only for a quick check")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128, help="side of the random training crops")
    parser.add_argument("--crop-grid", type=int, default=32,
                        help="crop corners on multiples of this (32: the network's stride, so JPEG's 8x8 blocks meet its "
                             "strides as on a whole image; 1: anywhere)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="where it trains (cuda: bfloat16 autocast and channels-last, finetune's defaults there)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (the distortions are made on the fly)")
    parser.add_argument("--cache", default=".cache/scratch")
    parser.add_argument("--out", default=SCRATCH_WEIGHTS)
    args = parser.parse_args()
    if args.crop_grid < 1:
        parser.error(f"--crop-grid must be a whole number of pixels >= 1, got {args.crop_grid}")
    if not os.path.isdir(args.data):
        raise SystemExit(f"NIPS 2017 images not found at {args.data}: pass --data")
    started = time.time()
    nips = NIPS2017(args.data, size=(224, 224))
    references = torch.stack([nips[i] for i in range(min(len(nips), args.references))])
    dataset = SyntheticIQA(references, metric="dss", cache=args.labels)
    train_set, val_set, test_set = dataset.split((0.7, 0.1, 0.2), seed=0)
    labels = dataset.labels.float()
    mean, std = float(labels[train_set.indices].mean()), float(labels[train_set.indices].std())
    print(f"{len(train_set)} train / {len(val_set)} val / {len(test_set)} test images (split by reference)", flush=True)

    torch.manual_seed(args.seed)
    model = surgery.create_model("resnet18-scratch")
    device = "" if args.device == "cpu" else f"-{torch.device(args.device).type}"  # a GPU trains in autocast: its own run
    grid = "" if args.crop_grid == 1 else f"-grid{args.crop_grid}"
    folder = f"tune-e{args.epochs}-lr{args.lr:g}-crop{args.crop}{grid}{device}"
    result = surgery.finetune(
        model, Standardised(train_set, mean, std, crop=args.crop, grid=args.crop_grid), Standardised(val_set, mean, std, crop=None),
        epochs=args.epochs, loss="mse", lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch,
        seed=args.seed, device=args.device, num_workers=args.workers, checkpoint_dir=os.path.join(args.cache, folder),
    )
    model.cpu()
    print(f"best epoch {result.best_epoch} (validation SROCC {result.best_srocc:.4f}) after {time.time() - started:.0f} s")
    last = model.head[-1]  # the head predicts z-scored labels: fold the scale back, so it outputs pseudo-MOS
    with torch.no_grad():
        last.weight.mul_(std)
        last.bias.mul_(std).add_(mean)
    lo, hi = float(labels[train_set.indices].min()), float(labels[train_set.indices].max())
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    record = {"state_dict": state, "sha256": state_fingerprint(state), "score_range": (lo, hi), "pseudo_mos": "dss",
              "epochs": args.epochs, "lr": args.lr, "crop": args.crop, "crop_grid": args.crop_grid,
              "best_epoch": result.best_epoch, "val_srocc": result.best_srocc,
              "split": {"seed": 0, "fractions": (0.7, 0.1, 0.2), "references": args.references}}
    # the test numbers are the float16 weights' as loaded back, measured before the zoo's file is written
    scratch_file = os.path.join(args.cache, "measured.pt")
    atomic_save(record, scratch_file)
    shipped = load_scratch_weights(surgery.create_model("resnet18-scratch"), scratch_file).eval()
    test_images = torch.stack([test_set[i][0] for i in range(len(test_set))])
    predicted = scores(shipped, test_images, 32)
    test = {"srocc": metrics.srocc(predicted, labels[test_set.indices]), "plcc": metrics.plcc(predicted, labels[test_set.indices])}
    kinds = [dataset.items[i][1] or "pristine" for i in test_set.indices]
    within = by_distortion(predicted, labels[test_set.indices], kinds)
    test["srocc_by_distortion"] = {k: v for k, v in within.items() if k != "all"}
    atomic_save({**record, "test": test}, args.out)
    print(f"test ({len(test_set) // 21} held-out references, pseudo-MOS dss): SROCC {test['srocc']:.4f}, PLCC {test['plcc']:.4f}; "
          "SROCC by distortion: " + ", ".join(f"{k} {v:.4f}" for k, v in test["srocc_by_distortion"].items()))
    print(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB) after {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
