"""The paper's comparison (Meleshin et al. §5, Tables 2-4, Figure 3) on the default model
and held-out NIPS 2017 references, with gradient-masking checks and a position sweep.

Data: the default model's own split of ../shared/data/nips2017 (seed 0, 70/10/20 by
reference image; DSS **pseudo-MOS**, not human scores). Every variant starts from the
default model and gets the same fine-tune on training references (AdamW, MSE, cosine,
``--tune-steps`` steps of batch ``--batch``, best epoch by validation SROCC), training the parts
the default model was trained in plus everything from the block on; the frozen ImageNet
trunk before them is neither trained nor pruned, for every variant alike. Variants:

- ``original``: the default model, untouched;
- ``control``: fine-tune only (same steps, no block): what extra training alone does;
- ``cayley`` / ``aol`` / ``aoc``: RobustBlock with that orthogonal layer + fine-tune;
- ``cayley+l2`` / ``cayley+pls``: RobustBlock + 10% pruning + fine-tune (the method);
- ``nt`` / ``at``: fine-tune with gradient-norm regularisation / adversarial training;
- ``silu``: ReLU6 -> SiLU in the fine-tuned layers (partial replacement) + fine-tune;
- ``robust`` / ``robust-strong``: ``surgery.robustify(default, train, val, recipe=name, target=None,
  seed=s)`` (the recipe's own loss, epochs, lr and trained parts, whatever this script's
  fine-tune options; its fixed blend, not the calibrated one it ships with: ``recipe_proof.py``
  measures that); the two share one fine-tune;
- ``trades`` / ``trades-B``: consistency training with this script's fine-tune (B its weight;
  ``--trades-*``: the comparison's 3 steps on every image at beta 0.02, which the robust recipes
  used before their 2 steps on half of each batch at beta 0.04: ``trades-0.04+share-0.5+steps-2``),
  to vary what the recipe fixes;
- ``distill``: fit the original model's scores of the training images, not their pseudo-MOS;
- ``blend-K``: after the fine-tune, keep ``K`` of its weight change (``surgery.blend``, WiSE-FT);
  the fine-tune is the variant's without this part, shared with it in the cache;
- ``epochs-N``: fine-tune for N epochs instead of ``--epochs``, e.g. to give a cheaper
  defence the training time of a costlier one (``nt+epochs-5``);
- ``steps-K`` / ``share-F`` with ``trades``: consistency training's inner attack takes K steps
  (instead of ``--trades-steps``) on the share F of each batch (``ConsistencyTraining(fraction=F)``);
- parts joined by ``+`` combine (``cayley+trades``, ``distill+trades-0.02``).

Columns: SROCC/PLCC on the evaluation references; AbsGain and R-Score AUCs of PGD-1 and
PGD-8 over eps {2,4,6,8,10}/255, AbsGain/R-Score of UAP and stAdv on ``--attack-images``
of them (one shared score range: the default model's, i.e. the training pseudo-MOS range);
seconds per fine-tune epoch and ms per image at batch 8. ``--seeds`` repeats the fine-tune
of the ``--seeded`` variants; the summary gives mean and spread.

Masking checks, per model, at 8/255 on the attacked images: :func:`surgery.masking_checks`
(random sign noise gains <= 1/4 of the best white-box attack; PGD-1 <= PGD-8 <= APGD-``--masking-steps``;
PGD-8 transferred from the original and Square-``--masking-queries`` gain no more than the
best white-box attack); the report lists every check with its numbers.

Position sweep: the Cayley block before every stage, same fine-tune; SROCC and PGD-1 AUC
per position, the Spearman correlation of the Lemma 1 ratio with the measured AUC, and
the most robust position that keeps >= 99% of the original SROCC. Recipe sweep: block
width, pooled size, fine-tuned stages and learning rate before the last stage, one seed.

Everything is cached under ``--cache`` (fine-tune checkpoints, attacked scores): a run
that stops continues where it was.

    python benchmarks/paper_tables.py [--attack-images 100] [--seeds 0 1 2] [--parts table positions recipes]
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import time

import numpy as np
import torch
from scipy import stats

import surgery
from surgery import metrics
from surgery.attacks import scores
from surgery.blocks import PooledSize
from surgery.data import NIPS2017, SyntheticIQA
from surgery.defenses import AdversarialTraining, ConsistencyTraining, NormRegularization, replace_activations
from surgery.files import atomic_write_text
from surgery.fingerprint import image_fingerprints
from surgery.recipes import RECIPES
from surgery.report import plot_curves, plot_tradeoff
from surgery.zoo.default import DEFAULT_WEIGHTS, trained_prefixes

from train_default import SHARED

STAGES = 7  # EfficientNet-Lite0 stages: backbone.blocks.0 .. 6
BUDGET = 8 / 255  # the masking checks' budget
# the variant ``trades``' consistency training: the comparison's (eps 4/255, 3 steps on every image,
# beta 0.02; the robust recipe's until it moved to 2 steps on half of each batch at beta 0.04)
TRADES = {"beta": 0.02, "eps": 4.0, "steps": 3}
ROBUST_RECIPES = ("robust", "robust-strong")  # variants that are surgery.robustify's recipes, called as shipped
VARIANT_PARTS = ("control", "cayley", "aol", "aoc", "l2", "pls", "nt", "at", "trades", "silu", "distill")


def load_data(args) -> dict:
    nips = NIPS2017(args.data, size=(224, 224))
    references = torch.stack([nips[i] for i in range(min(len(nips), args.references))])
    dataset = SyntheticIQA(references, metric="dss", cache=args.labels)
    train, val, test = dataset.split((0.7, 0.1, 0.2), seed=0)
    generator = torch.Generator().manual_seed(0)

    kinds: dict[str, list[str]] = {}  # each taken image's distortion ("pristine" for a reference)

    def take(subset, count, name):
        picked = torch.randperm(len(subset.indices), generator=generator)[:count].sort().values
        indices = [subset.indices[i] for i in picked]
        kinds[name] = [dataset.items[i][1] or "pristine" for i in indices]
        return torch.stack([dataset[i][0] for i in indices]), dataset.labels[indices].float()

    held_out = sorted({dataset.reference_of(i) for i in test.indices})
    first = args.first_eval_reference
    if first < 0:  # a negative start would slice from the end: other references, silently
        raise SystemExit(f"--first-eval-reference must be >= 0, got {first}")
    if first + args.eval_references > len(held_out):
        raise SystemExit(f"--first-eval-reference {first} + --eval-references {args.eval_references} asks for more than "
                         f"the {len(held_out)} held-out references of {args.references}: ask for fewer")
    test_refs = set(held_out[first:first + args.eval_references])
    eval_indices = [i for i in test.indices if dataset.reference_of(i) in test_refs]
    if args.attack_images > len(eval_indices):
        raise SystemExit(f"--attack-images {args.attack_images} is more than the {len(eval_indices)} test images: "
                         "ask for fewer (an image attacked twice would count twice)")
    eval_images = torch.stack([dataset[i][0] for i in eval_indices])
    eval_mos = dataset.labels[eval_indices].float()
    pick = torch.linspace(0, len(eval_indices) - 1, args.attack_images).round().long()
    return {
        "tune": take(train, args.tune_steps * args.batch // args.epochs, "tune"),
        "val": take(val, args.val_images, "val"),
        "eval": (eval_images, eval_mos),
        "attack": (eval_images[pick], eval_mos[pick]),
        "attack_subset": pick,
        "attack_references": dataset.references[[dataset.reference_of(eval_indices[i]) for i in pick.tolist()]],
        "kinds": kinds,
    }


def attacked_tag(data: dict) -> str:
    """A digest of the attacked images, which names their caches."""
    return hashlib.sha1(image_fingerprints(data["attack"][0]).numpy().tobytes()).hexdigest()[:10]


def add_data_arguments(parser: argparse.ArgumentParser, eval_references: int, attack_images: int,
                       first_eval_reference: int = 0) -> None:
    """The data and fine-tune options this script shares with the other benchmarks."""
    parser.add_argument("--data", default=SHARED)
    parser.add_argument("--labels", default=".cache/default/labels-dss.pt", help="pseudo-MOS cache (shared with train_default.py)")
    parser.add_argument("--references", type=int, default=600,
                        help="NIPS images used; fewer only for a quick check (the split then differs from the default model's)")
    parser.add_argument("--eval-references", type=int, default=eval_references, help="held-out references for SROCC/PLCC (21 images each)")
    parser.add_argument("--first-eval-reference", type=int, default=first_eval_reference,
                        help="held-out references before this one (in sorted order) are skipped: 50 leaves out those "
                             "every other benchmark reports on, where the recipe's settings were chosen")
    parser.add_argument("--attack-images", type=int, default=attack_images)
    parser.add_argument("--tune-steps", type=int, default=316)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--val-images", type=int, default=252)
    parser.add_argument("--lr", type=float, default=3e-4)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The strong attacks and consistency-training options this script shares with train_default_robust.py."""
    parser.add_argument("--strong", nargs="*", default=["apgd-20"], help="strong attacks, run raising and lowering the score")
    parser.add_argument("--trades-beta", type=float, default=TRADES["beta"], help="consistency weight of the variant 'trades'")
    parser.add_argument("--trades-eps", type=float, default=TRADES["eps"], help="consistency training's budget, in 1/255")
    parser.add_argument("--trades-steps", type=int, default=TRADES["steps"], help="consistency training's attack steps")
    parser.add_argument("--masking-steps", type=int, default=50, help="APGD steps of the masking checks")
    parser.add_argument("--masking-queries", type=int, default=500, help="Square queries of the masking checks")


def parse_with_data(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if not os.path.isdir(args.data):
        raise SystemExit(f"NIPS 2017 images not found at {args.data}: pass --data")
    return args


def trainable(model: torch.nn.Module, first_stage: int) -> list[torch.nn.Parameter]:
    """Stages from ``first_stage`` on, the head, and every RobustBlock wherever it is,
    except the parameters of blocks built frozen (the paper code's block)."""
    prefixes = trained_prefixes(first_stage)
    frozen = {id(p) for b in surgery.robust_blocks(model).values() if b.config.freeze for p in b.parameters()}
    return [p for n, p in model.named_parameters() if (n.startswith(prefixes) or ".robust." in n) and id(p) not in frozen]


def frozen_trunk(model: torch.nn.Module, first_stage: int) -> list[torch.nn.Module]:
    backbone = model.backbone
    return [backbone.conv_stem, backbone.bn1, *backbone.blocks[:first_stage]]


def block_options(args, **overrides) -> dict:
    """harden() keywords for the block recipe chosen on the command line."""
    options = {"position": args.position, "hidden_channels": args.hidden_channels, "pooled_size": args.pooled_size}
    return {**options, **overrides, "inplace": True, "input_size": (3, 224, 224)}


def build(variant: str, base: torch.nn.Module, data: dict, args, **block) -> tuple[torch.nn.Module, dict]:
    """The variant's model (before fine-tuning) and the finetune() options it needs.

    A variant is ``+``-joined parts: a block (``cayley``, ``aol``, ``aoc``), pruning of
    it (``l2``, ``pls``), one training defence (``nt``, ``at``, ``trades`` or ``trades-B``
    with consistency weight B), ``silu``, ``distill`` (fit the original model's scores of the
    training images instead of their pseudo-MOS), ``epochs-N``; ``control`` is none of them. The
    options may hold ``train``, the fine-tune's (images, targets) when they are not ``data["tune"]``,
    and ``epochs``."""
    model = copy.deepcopy(base)
    options: dict = {}
    first_stage = args.train_from
    parts = variant.split("+")
    unknown = [p for p in parts if p not in VARIANT_PARTS and not p.startswith(("trades-", "epochs-", "share-", "steps-"))]
    if unknown or (variant == "control") != (parts == ["control"]) or len(parts) != len(set(parts)):
        raise ValueError(f"unknown variant {variant!r}")
    ortho = next((p for p in parts if p in ("cayley", "aol", "aoc")), None)
    if ortho:
        model = surgery.harden(model, ortho=ortho, **block_options(args, **block))
    pruning = next((p for p in parts if p in ("l2", "pls")), None)
    if pruning:
        if not ortho:
            raise ValueError(f"variant {variant!r}: pruning follows a block")
        calib, calib_mos = data["tune"][0][:200], data["tune"][1][:200]
        report = surgery.prune(model, pruning, 0.10, calib=calib, calib_targets=calib_mos, ignored=frozen_trunk(model, first_stage))
        print(f"  {report}")
    for part in parts:
        if part == "nt":
            options["defense"] = NormRegularization()
        elif part == "at":
            options["defense"] = AdversarialTraining(label_range=base.score_range)
        elif part.startswith("trades"):  # as surgery.robustify: the gap in units of the labels' spread
            beta = float(part.partition("-")[2] or args.trades_beta)
            spread = float(data["tune"][1].std())
            steps = int(_setting(parts, "steps-", args.trades_steps))
            share = float(_setting(parts, "share-", 1.0))
            options["defense"] = ConsistencyTraining(
                eps=args.trades_eps / 255, steps=steps, beta=beta, scale=spread, fraction=share
            )
        elif part == "distill":
            options["train"] = (data["tune"][0], scores(base, data["tune"][0], 16))
        elif part.startswith("epochs-"):
            options["epochs"] = variant_epochs(variant, args)
        elif part == "silu":
            names = [f"backbone.blocks.{i}" for i in range(first_stage, STAGES)] + ["backbone.bn2", "head"]
            replace_activations(model, "silu", modules=names)
    return model, options


def _setting(parts: list[str], prefix: str, default):
    """The value of a variant's ``<prefix><value>`` part (``steps-2``, ``share-0.5``), else ``default``."""
    values = [p[len(prefix):] for p in parts if p.startswith(prefix)]
    return values[0] if values else default


def split_blend(variant: str) -> tuple[str, float | None]:
    """``("trades-0.02", 0.5)`` for ``"blend-0.5+trades-0.02"``: the variant fine-tuned, and
    the fraction of its weight change kept (None: all of it)."""
    parts = variant.split("+")
    blends = [p for p in parts if p.startswith("blend-")]
    if not blends:
        return variant, None
    rest = [p for p in parts if p not in blends]
    if len(blends) > 1 or not rest:
        raise ValueError(f"variant {variant!r}: one blend-K part, after a fine-tuned variant")
    return "+".join(rest), float(blends[0].partition("-")[2])


def variant_epochs(variant: str, args) -> int:
    """The fine-tune's epochs: the variant's ``epochs-N`` part, else ``--epochs``."""
    counts = [p.partition("-")[2] for p in variant.split("+") if p.startswith("epochs-")]
    if len(counts) > 1 or (counts and not (counts[0].isdigit() and int(counts[0]) > 0)):
        raise ValueError(f"variant {variant!r}: one epochs-N part, N a positive whole number")
    return int(counts[0]) if counts else args.epochs


def tune_tag(variant: str, args) -> str:
    """What else names a variant's fine-tune in the cache: the schedule when it is not the
    default one, and consistency training's settings."""
    epochs = variant_epochs(variant, args)
    tag = "" if (args.lr, args.tune_steps, epochs) == (3e-4, 316, 2) else f"-lr{args.lr:g}-{args.tune_steps}x{epochs}"
    if "trades" in variant:
        tag += f"-eps{args.trades_eps:g}-k{args.trades_steps}" + (f"-b{args.trades_beta:g}" if "trades" in variant.split("+") else "")
    return tag


def tune_folder(variant: str, args, seed: int | None = None) -> str:
    """Where a variant's fine-tune is cached; ``seed`` None for the first seed's run."""
    name = variant if seed is None else f"{variant}-s{seed}"
    return os.path.join(args.cache, "tune", name + tune_tag(variant, args))


def fine_tune(model, options, data, first_stage, seed, folder, args) -> float:
    """Fine-tune in place; seconds per epoch (from the run, or the cached run's history)."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = trainable(model, first_stage)
    for p in params:
        p.requires_grad_(True)
    options = dict(options)
    train = options.pop("train", data["tune"])
    epochs = options.pop("epochs", args.epochs)
    result = surgery.finetune(
        model, train, data["val"], epochs=epochs, lr=args.lr, loss="mse", batch_size=args.batch,
        parameters=params, seed=seed, checkpoint_dir=folder, progress=False, **options,
    )
    model.eval()
    return float(np.mean([h["seconds"] for h in result.history]))


def data_tag(data: dict) -> str:
    """``"<train>+<val>"`` images: what names a robustify run's checkpoint folder besides its seed
    and its recipe's training digest (as tune_tag names a variant's schedule)."""
    return f"{len(data['tune'][1])}+{len(data['val'][1])}"


def robust_recipe(variant: str, base, data, seed: int, args) -> tuple[torch.nn.Module, float]:
    """The robust recipe ``variant`` with its fixed blend (its fine-tune shared by ``robust`` and
    ``robust-strong``): the model and seconds per fine-tune epoch."""
    folder = os.path.join(args.cache, "tune", f"recipe-robust-{RECIPES[variant].training_digest()}-{data_tag(data)}-s{seed}")
    model, result = surgery.robustify(base, data["tune"], data["val"], recipe=variant, target=None, seed=seed,
                                      checkpoint_dir=folder, progress=False)
    return model.eval(), float(np.mean([h["seconds"] for h in result.history]))


def inference_ms(model, images: torch.Tensor, repeats: int = 3) -> float:
    batch = images[:8]
    with torch.no_grad():
        model(batch)
        started = time.perf_counter()
        for _ in range(repeats):
            model(batch)
    return (time.perf_counter() - started) / repeats / batch.shape[0] * 1000


def own_range(model, images: torch.Tensor) -> tuple[float, float]:
    """(min, max) of ``model``'s clean scores on ``images``: the range its score changes are
    measured in. Each model has its own, as the MSU benchmark normalises each metric by its own
    range: consistency training squashes the scores toward their mean, and in the original's
    range that squash alone would pass for robustness."""
    return metrics.score_range(scores(model, images, 16))


def attack_table(name, model, data, cache, attacks=("pgd-1", "pgd-8", "uap", "stadv"), strong=(), score_range=None,
                 **evaluate_options) -> surgery.Table:
    """SROCC / PLCC / KROCC on the evaluation images, ``attacks`` on the attacked ones, and
    each ``strong`` attack raising and lowering the score (cached; ``evaluate_options`` go to
    ``surgery.evaluate``), every AbsGain in the model's own range on the evaluation images
    (``score_range``: that range when the caller has it already, else :func:`own_range`). A
    lowering attack's AbsGain is negative; its summary keeps the size (``"<attack> down abs_gain_auc"``)."""
    score_range = own_range(model, data["eval"][0]) if score_range is None else score_range
    # evaluate's cache refuses another set of attacked images: each set (--attack-images) has its own folder
    cache = f"{cache}-{attacked_tag(data)}"
    options = {"score_range": score_range, "name": name, "progress": False, "cache": cache, **evaluate_options}
    table = surgery.evaluate(model, *data["eval"], attacks=[*attacks, *strong], attack_subset=data["attack_subset"], **options)
    rows, summary = list(table.rows), dict(table.summaries[0])
    if strong:  # on the attacked images alone: the correlations are in the summary already
        lowered = surgery.evaluate(model, *data["attack"], attacks=strong, direction="down", **options)
        rows += [r for r in lowered.rows if r.get("attack") in {f"{a} down" for a in strong}]
        summary.update({f"{a} down abs_gain_auc": lowered.summaries[0][f"{a} down abs_gain_auc"] for a in strong})
    return surgery.Table(rows, [summary])


def pgd1_summary(name, model, data, args) -> dict:
    """SROCC and PGD-1 AbsGainAUC, what the sweeps compare."""
    return attack_table(name, model, data, os.path.join(args.cache, "eval"), ["pgd-1"]).summaries[0]


def sweep_row(result: dict, original: dict) -> dict:
    return {
        "srocc": result["srocc"], "srocc kept": result["srocc"] / original["srocc"],
        "pgd-1 abs_gain_auc": result["pgd-1 abs_gain_auc"], "x original": result["pgd-1 abs_gain_auc"] / original["pgd-1 abs_gain_auc"],
    }


def position_sweep(base, data, original, args) -> tuple[list[dict], dict]:
    rows = []
    lemma = {p["name"]: p["lemma_ratio"] for p in surgery.positions(base, input_size=(3, 224, 224))}
    for stage in range(1, STAGES):
        name = f"backbone.blocks.{stage}"
        torch.manual_seed(0)
        model = surgery.harden(copy.deepcopy(base), **block_options(args, position=name))
        folder = os.path.join(args.cache, "tune", f"position-{stage}" + tune_tag("cayley", args))
        fine_tune(model, {}, data, args.train_from, 0, folder, args)
        rows.append({"position": f"before {name}", "lemma_ratio": lemma[name],
                     **sweep_row(pgd1_summary(f"position-{stage}", model, data, args), original)})
        print(f"  position {name}: SROCC {rows[-1]['srocc']:.4f}, PGD-1 AbsGainAUC {rows[-1]['pgd-1 abs_gain_auc']:.4f}")
    rho = stats.spearmanr([r["lemma_ratio"] for r in rows], [r["pgd-1 abs_gain_auc"] for r in rows]).statistic
    keeping = [r for r in rows if r["srocc kept"] >= 0.99]
    best = min(keeping, key=lambda r: r["pgd-1 abs_gain_auc"]) if keeping else None
    return rows, {"spearman(lemma ratio, pgd-1 auc)": float(rho), "best position at >= 99% SROCC": best and best["position"]}


def recipes(args) -> list[tuple[str, int | None, PooledSize, int, float]]:
    """(variant, block width, pooled size, first fine-tuned stage, learning rate) to try."""
    grid = [
        (variant, hidden, pooled, train_from, args.lr)
        for train_from in (args.train_from, STAGES - 1)
        for variant, hidden, pooled in (
            ("control", None, "min"), ("cayley", None, "min"), ("cayley", 24, "min"), ("cayley", None, 3), ("cayley", 24, 3),
        )
    ]
    # gentler fine-tunes: the freshly spliced block is the least sensitive before it is trained
    return grid + [(variant, None, "min", args.train_from, lr) for lr in (1e-4, 3e-5) for variant in ("control", "cayley")]


def recipe_sweep(base, data, original, args) -> list[dict]:
    """Block width, pooled size, fine-tuned stages and learning rate, one seed: SROCC and PGD-1 AUC each."""
    rows = []
    for variant, hidden, pooled, train_from, lr in recipes(args):
        name = f"{variant}, width {hidden or 'C/2'}, pool {pooled}" if variant != "control" else "control"
        name += f", train from stage {train_from}" + (f", lr {lr:g}" if lr != args.lr else "")
        tag = name.replace(", ", "-").replace(" ", "").replace("/", "")
        torch.manual_seed(0)
        recipe = argparse.Namespace(**{**vars(args), "train_from": train_from, "lr": lr})
        model, options = build(variant, base, data, recipe, hidden_channels=hidden, pooled_size=pooled)
        folder = os.path.join(args.cache, "tune", f"recipe-{tag}" + tune_tag(variant, recipe))
        fine_tune(model, options, data, train_from, 0, folder, recipe)
        rows.append({"recipe": name, **sweep_row(pgd1_summary(f"recipe-{tag}", model, data, args), original)})
        print(f"  {name}: SROCC {rows[-1]['srocc']:.4f}, PGD-1 AbsGainAUC {rows[-1]['pgd-1 abs_gain_auc']:.4f}")
    return rows


def markdown(records: list[dict]) -> str:
    return surgery.Table([], records).to_markdown()


def spread(summaries: list[dict]) -> list[dict]:
    """Mean over seeds per variant, with the standard deviation of the headline columns."""
    out = []
    for variant in dict.fromkeys(s["variant"] for s in summaries):
        group = [s for s in summaries if s["variant"] == variant]
        record = {"model": variant, "seeds": len(group)}
        for key in group[0]:
            values = [s[key] for s in group if isinstance(s.get(key), (int, float)) and not isinstance(s.get(key), bool)]
            if key in ("model", "variant", "seed", "n", "attack_n") or len(values) != len(group):
                continue
            record[key] = float(np.mean(values))
            if len(group) > 1 and (key == "srocc" or key.endswith("abs_gain_auc")):
                record[f"{key} sd"] = float(np.std(values, ddof=1))
        out.append(record)
    return out


def goals(summary: list[dict], headline: str, strong: list[str]) -> list[str]:
    """The robustness goals checked on ``headline``: SROCC kept, AUC ratios to the original,
    and whether it beats NT, AT and the control (each variant of them run) on SROCC and on every attack's AUC."""
    by = {s["model"]: s for s in summary}
    if headline not in by:
        return [f"{headline} was not run: no goals checked"]
    base, ours = by["original"], by[headline]
    kept = ours["srocc"] / base["srocc"]
    lines = [f"{headline} keeps {kept:.1%} of the original SROCC (goal >= 99%): {'met' if kept >= 0.99 else 'MISSED'}"]
    keys = ["pgd-1", "pgd-8"] + [f"{a}{d}" for a in strong for d in ("", " down")]
    for key in keys:
        ratio = ours[f"{key} abs_gain_auc"] / base[f"{key} abs_gain_auc"]
        goal = 0.64 if key in ("pgd-1", "pgd-8") else 2 / 3
        lines.append(f"{headline} {key} AbsGainAUC is {ratio:.2f}x the original (goal <= {goal:.2f}x): "
                     f"{'met' if ratio <= goal else 'MISSED'}")
    for rival in [name for name in by if {"nt", "at", "control"} & set(name.split("+"))]:
        worse = [k for k in keys if ours[f"{k} abs_gain_auc"] > by[rival][f"{k} abs_gain_auc"]]
        if ours["srocc"] < by[rival]["srocc"]:
            worse.insert(0, "SROCC")
        lines.append(f"{headline} vs {rival}: SROCC {ours['srocc']:.4f} vs {by[rival]['srocc']:.4f}; "
                     + ("beats it on SROCC and every AUC" if not worse else f"does NOT beat it on {', '.join(worse)}"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, eval_references=50, attack_images=100)
    parser.add_argument("--variants", nargs="+", default=[
        "control", "cayley", "aol", "aoc", "cayley+l2", "cayley+pls", "nt", "at", "silu", "trades", "cayley+trades", "robust",
    ])
    parser.add_argument("--headline", nargs="+", default=["cayley+l2", "robust"], help="the variants the goals are checked on")
    add_recipe_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeded", nargs="+", default=["control", "cayley+l2", "robust"], help="variants repeated over --seeds")
    parser.add_argument("--position", default="auto", help="where the block goes (harden's position)")
    parser.add_argument("--hidden-channels", type=int, default=None, help="block width (default half its input)")
    parser.add_argument("--pooled-size", default="min", type=lambda v: v if v in ("min", "keep") else int(v))
    parser.add_argument("--train-from", type=int, default=None,
                        help="first fine-tuned stage for every variant (default: the default model's first trained stage)")
    parser.add_argument("--parts", nargs="+", choices=("table", "positions", "recipes"), default=["table", "positions", "recipes"])
    parser.add_argument("--cache", default=".cache/paper")
    parser.add_argument("--out", default="outputs/paper")
    args = parse_with_data(parser)
    started = time.time()
    os.makedirs(args.out, exist_ok=True)

    data = load_data(args)
    print(f"fine-tune {len(data['tune'][1])} / val {len(data['val'][1])} / evaluation {len(data['eval'][1])} images "
          f"(attacks on {len(data['attack'][1])}) after {time.time() - started:.0f} s")
    base = surgery.create_model("default", pretrained=True).eval()
    if args.train_from is None:
        args.train_from = torch.load(DEFAULT_WEIGHTS, weights_only=True)["first_stage"]
    def write(report: list[str], filename: str) -> None:
        atomic_write_text("\n".join(report) + "\n", os.path.join(args.out, filename))
        print("\n".join(report))

    if "table" in args.parts:
        write(comparison(base, data, args, started), "comparison.md")
    original = pgd1_summary("original", base, data, args) if {"positions", "recipes"} & set(args.parts) else None
    if "positions" in args.parts:
        positions, verdict = position_sweep(base, data, original, args)
        report = ["## Position sweep (Cayley block, one seed)", "", markdown(positions), ""]
        report += [f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in verdict.items()]
        write(report, "positions.md")
    if "recipes" in args.parts:
        rows = recipe_sweep(base, data, original, args)
        write(["## Block recipes (before the last stage, Cayley, one seed)", "", markdown(rows)], "recipes.md")
    print(f"{time.time() - started:.0f} s in all; reports in {args.out}/")


def comparison(base, data, args, started) -> list[str]:
    """Every variant fine-tuned, attacked and checked; the report's lines."""
    eval_cache = os.path.join(args.cache, "eval")
    ranges = {"original": own_range(base, data["eval"][0])}  # each model's own, for its table and its masking checks
    table = attack_table("original", base, data, eval_cache, strong=args.strong, score_range=ranges["original"])
    summaries = [{**table.summaries[0], "variant": "original", "seed": 0, "epoch s": None,
                  "ms/image": inference_ms(base, data["eval"][0])}]
    models = {"original": base}
    for variant in args.variants:
        for seed in args.seeds if variant in args.seeded else args.seeds[:1]:
            name = variant if seed == args.seeds[0] else f"{variant} s{seed}"
            if variant in ROBUST_RECIPES:
                model, epoch_s = robust_recipe(variant, base, data, seed, args)
            else:
                trained, keep = split_blend(variant)
                torch.manual_seed(seed)
                model, options = build(trained, base, data, args)
                folder = tune_folder(trained, args, None if seed == args.seeds[0] else seed)
                epoch_s = fine_tune(model, options, data, args.train_from, seed, folder, args)
                if keep is not None:
                    surgery.blend(model, base, keep)
            ranges[name] = own_range(model, data["eval"][0])
            result = attack_table(name, model, data, eval_cache, strong=args.strong, score_range=ranges[name])
            table = table + result
            summaries.append({**result.summaries[0], "variant": variant, "seed": seed, "epoch s": epoch_s,
                              "ms/image": inference_ms(model, data["eval"][0])})
            models[name] = model
            s = summaries[-1]
            print(f"{name}: SROCC {s['srocc']:.4f}, PGD-1 AbsGainAUC {s['pgd-1 abs_gain_auc']:.4f} ({time.time() - started:.0f} s)")

    masking = {"eps": BUDGET, "strong_steps": args.masking_steps, "queries": args.masking_queries}
    checks = [
        row for name, m in models.items()
        for row in surgery.masking_checks(m, data["attack"][0], original=None if m is base else base, name=name,
                                          score_range=ranges[name], **masking).rows
    ]
    summary = spread(summaries)

    table.write(os.path.join(args.out, "results.csv"))
    atomic_write_text(json.dumps({"summaries": summaries, "checks": checks}, indent=2, default=float),
                      os.path.join(args.out, "summaries.json"))
    plot_tradeoff(surgery.Table([], summary), os.path.join(args.out, "tradeoff.png"))
    for attack in args.strong:
        plot_tradeoff(surgery.Table([], summary), os.path.join(args.out, f"tradeoff-{attack}.png"), attack=attack)
    shown = ("original", "control", *args.headline, "nt", "at")
    plot_curves(surgery.Table([r for r in table.rows if r["model"] in shown], []), os.path.join(args.out, "abs_gain_vs_eps.png"))
    columns = ["model", "seeds", "srocc", "srocc sd", "plcc", "pgd-1 abs_gain_auc", "pgd-1 abs_gain_auc sd", "pgd-1 r_score_auc",
               "pgd-8 abs_gain_auc", "pgd-8 abs_gain_auc sd", "pgd-8 r_score_auc",
               *[f"{a}{d} abs_gain_auc{sd}" for a in args.strong for d in ("", " down") for sd in ("", " sd")],
               "uap abs_gain", "stadv abs_gain", "epoch s", "ms/image"]
    report = ["## Comparison", "", markdown([{c: s.get(c) for c in columns} for s in summary]), "", "## Goals", ""]
    report += [f"- {line}" for headline in args.headline for line in goals(summary, headline, args.strong)]
    report += ["", "## Gradient-masking checks", "", markdown(checks)]
    return report

if __name__ == "__main__":
    main()
