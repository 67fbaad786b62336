"""Train the embedded default model (``surgery.create_model("default", pretrained=True)``).

Data: the NIPS 2017 dev images in ../shared/data/nips2017 as pristine references (224x224),
each with Gaussian blur, Gaussian noise, JPEG and contrast loss at 5 levels, labelled with
a **pseudo-MOS** from a full-reference metric (never human scores). Split 70/10/20 by
reference image, never by distorted copy.

Which pseudo-MOS: every candidate metric (DSS, MS-SSIM, FSIM, VSI, GMSD) is predicted by
a ridge probe on frozen ImageNet features of the distorted images; the metric a
no-reference model can learn best (highest held-out SROCC of the probe) is used.

Recipe: the ImageNet trunk before ``--first-stage`` is frozen and its features are computed
once (cached on disk); the later stages, the head convolution and an MLP head are trained with
MSE on z-scored labels plus a PLCC term, AdamW, warm-up + cosine, keeping the best
epoch by validation SROCC. Then the quality bar is measured on the test references.

    python benchmarks/train_default.py [--epochs 4] [--first-stage 4] [--cache .cache/default] [--out surgery/zoo/weights/default.pt]

``--arch efficientnet_lite2 --metric dss`` builds ``create_model("default-lite2")`` the same way
on EfficientNet-Lite2 (same labels, split and recipe; written to ``weights/default-lite2.pt``).
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from surgery import metrics
from surgery.data import NIPS2017, PSEUDO_MOS_METRICS, SyntheticIQA
from surgery.files import atomic_save
from surgery.zoo.default import LITE_PACKAGES, TRAINED_WEIGHTS, DefaultIQA, trained_prefixes

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nips2017")


def trunk_features(model: DefaultIQA, images: torch.Tensor, first_stage: int) -> torch.Tensor:
    backbone = model.backbone
    x = backbone.bn1(backbone.conv_stem(model.normalize(images)))
    for stage in backbone.blocks[:first_stage]:
        x = stage(x)
    return x


def head_forward(model: DefaultIQA, features: torch.Tensor, first_stage: int) -> torch.Tensor:
    backbone = model.backbone
    x = features
    for stage in backbone.blocks[first_stage:]:
        x = stage(x)
    x = backbone.bn2(backbone.conv_head(x))
    return model.head(backbone.global_pool(x)).squeeze(-1)


def quality_bar(pred: np.ndarray, labels: np.ndarray, dataset: SyntheticIQA, indices: list[int]) -> dict:
    """SROCC/PLCC, mean Spearman of the 5 levels within each (image, distortion) series, and
    how often the pristine image scores above its two strongest distortions."""
    by_key: dict = {}
    pristine: dict = {}
    for p, i in zip(pred, indices):
        ref, kind, level = dataset.items[i]
        if kind is None:
            pristine[ref] = p
        else:
            by_key.setdefault((ref, kind), []).append((level, p))
    series_rho, above = [], []
    for (ref, kind), points in by_key.items():
        levels, scores = zip(*sorted(points))
        series_rho.append(stats.spearmanr(levels, scores).statistic * -1)
        if ref in pristine:
            above.append(pristine[ref] > max(scores[-2:]))
    return {
        "srocc": metrics.srocc(pred, labels),
        "plcc": metrics.plcc(pred, labels),
        "series_spearman": float(np.nanmean(series_rho)),
        "pristine_above_two_strongest": float(np.mean(above)),
    }


def choose_metric(model: DefaultIQA, references: torch.Tensor, cache: str, seed: int) -> tuple[str, dict]:
    """Ridge probe on frozen pooled ImageNet features for each candidate pseudo-MOS."""
    subset = references[torch.randperm(references.shape[0], generator=torch.Generator().manual_seed(seed))[:120]]
    results = {}
    features = None
    for name in PSEUDO_MOS_METRICS:
        data = SyntheticIQA(subset, metric=name, cache=os.path.join(cache, f"probe-{name}.pt"))
        if features is None:
            with torch.no_grad():
                features = torch.cat([
                    model.backbone(model.normalize(torch.stack([data[i][0] for i in range(s, min(s + 64, len(data)))])))
                    for s in range(0, len(data), 64)
                ]).double()
            groups = np.array([data.reference_of(i) for i in range(len(data))])
        y = data.labels.double()
        train = torch.from_numpy(groups < 90)
        x_train, x_test = features[train], features[~train]
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        a = (x_train - mean) / std
        weights = torch.linalg.solve(a.T @ a + 10.0 * torch.eye(a.shape[1], dtype=a.dtype), a.T @ (y[train] - y[train].mean()))
        pred = ((x_test - mean) / std) @ weights
        results[name] = metrics.srocc(pred, y[~train])
        print(f"  probe SROCC for pseudo-MOS {name}: {results[name]:.3f}")
    return max(results, key=results.get), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=SHARED)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--metric", default=None, help="skip the probe and use this pseudo-MOS")
    parser.add_argument("--cache", default=".cache/default")
    parser.add_argument("--arch", default="efficientnet_lite0", choices=sorted(LITE_PACKAGES), help="the EfficientNet-Lite backbone")
    parser.add_argument("--out", default=None, help="default: the zoo's weights file of --arch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-stage", type=int, default=4, help="first trained EfficientNet stage (0-6)")
    args = parser.parse_args()
    args.out = args.out or TRAINED_WEIGHTS[args.arch]
    torch.manual_seed(args.seed)
    os.makedirs(args.cache, exist_ok=True)
    started = time.time()

    nips = NIPS2017(args.data, size=(224, 224))
    references = torch.stack([nips[i] for i in range(len(nips))])
    print(f"{len(nips)} reference images from {args.data}")
    model = DefaultIQA(imagenet=True, arch=args.arch).eval()

    metric, probe = (args.metric, {}) if args.metric else choose_metric(model, references, args.cache, args.seed)
    print(f"pseudo-MOS: {metric}")
    dataset = SyntheticIQA(references, metric=metric, cache=os.path.join(args.cache, f"labels-{metric}.pt"))
    train_set, val_set, test_set = dataset.split((0.7, 0.1, 0.2), seed=args.seed)
    print(f"{len(dataset)} images: {len(train_set)} train / {len(val_set)} val / {len(test_set)} test (split by reference)")

    suffix = "" if args.arch == "efficientnet_lite0" else f"-{args.arch}"
    feature_file = os.path.join(args.cache, f"trunk-features-{args.first_stage}{suffix}.pt")
    if os.path.isfile(feature_file) and torch.load(feature_file, weights_only=True)["n"] == len(dataset):
        features = torch.load(feature_file, weights_only=True)["features"]
    else:
        chunks = []
        with torch.no_grad():
            for start in range(0, len(dataset), 64):
                batch = torch.stack([dataset[i][0] for i in range(start, min(start + 64, len(dataset)))])
                chunks.append(trunk_features(model, batch, args.first_stage).half())
        features = torch.cat(chunks)
        atomic_save({"n": len(dataset), "features": features}, feature_file)
    print(f"trunk features {tuple(features.shape)} ready after {time.time() - started:.0f} s")

    labels = dataset.labels.float()
    mean, std = labels[train_set.indices].mean(), labels[train_set.indices].std()
    params = [p for n, p in model.named_parameters() if n.startswith(trained_prefixes(args.first_stage))]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_set) / args.batch)
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )

    def predict(indices):
        model.eval()
        with torch.no_grad():
            return torch.cat([
                head_forward(model, features[indices[s : s + 256]].float(), args.first_stage) for s in range(0, len(indices), 256)
            ])

    best, best_state = -1.0, None
    train_idx = torch.tensor(train_set.indices)
    for epoch in range(args.epochs):
        model.train()
        model.backbone.blocks[: args.first_stage].eval()
        order = train_idx[torch.randperm(len(train_idx))]
        for s in range(0, len(order), args.batch):
            idx = order[s : s + args.batch]
            x = features[idx].float()
            if torch.rand(()) < 0.5:  # horizontal flip of the feature maps as augmentation
                x = x.flip(-1)
            target = (labels[idx] - mean) / std
            pred = head_forward(model, x, args.first_stage)
            loss = F.mse_loss(pred, target) + 0.5 * (1 - F.cosine_similarity(pred - pred.mean(), target - target.mean(), dim=0))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        val_pred = predict(val_set.indices)
        val_srocc = metrics.srocc(val_pred, labels[val_set.indices])
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f}, val SROCC {val_srocc:.4f} ({time.time() - started:.0f} s)")
        if val_srocc > best:
            best, best_state = val_srocc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)

    # the head predicts z-scored labels; fold the scale back so the model outputs pseudo-MOS
    last = model.head[-1]
    with torch.no_grad():
        last.weight.mul_(std)
        last.bias.mul_(std).add_(mean)
    test_pred = predict(test_set.indices).numpy()
    bar = quality_bar(test_pred, labels[test_set.indices].numpy(), dataset, test_set.indices)
    lo, hi = float(labels[train_set.indices].min()), float(labels[train_set.indices].max())
    atomic_save(
        {
            "state_dict": {k: v.half() for k, v in model.trained_state(args.first_stage).items()},
            "first_stage": args.first_stage,
            "arch": args.arch,
            "score_range": (lo, hi),
            "pseudo_mos": metric,
            "probe_srocc": probe,
            "test": bar,
            "split": {"seed": args.seed, "fractions": (0.7, 0.1, 0.2), "references": len(nips)},
        },
        args.out,
    )
    print(f"test (held-out references, pseudo-MOS {metric}): " + ", ".join(f"{k} {v:.4f}" for k, v in bar.items()))
    print(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB) after {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
