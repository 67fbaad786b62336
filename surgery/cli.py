"""Command line: ``surgery harden | locate | describe | eval | models | demo`` (also ``python -m surgery``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch
from torch import nn

import surgery
from surgery import distributed
from surgery.calibration import check_target
from surgery.evaluation import DEFAULT_ATTACKS, resolve_attacks
from surgery.recipes import RECIPES
from surgery.training import SCHEDULES
from surgery.ortho import ortho_names


DEBUG_VARIABLE = "SURGERY_DEBUG"


class UsageError(Exception):
    """A command line that cannot work as given (exit code 2)."""


def _model_kwargs(pairs: list[str]) -> dict:
    """KEY=VALUE pairs; values parsed as JSON when they can be (numbers, lists), else strings."""
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-arg expects KEY=VALUE, got {pair!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value!r}") from None
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (exclusive), got {number:g}")
    return number


def _target(value: str) -> float | str | None:
    """``--target``: a share of the validation SROCC in (0, 1], ``recipe`` (the recipe's own) or ``none`` (its fixed blend)."""
    if value.lower() in ("recipe", "none"):
        return None if value.lower() == "none" else "recipe"
    try:
        number = float(value)
        check_target(number)  # robustify's own rule
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected the share of the validation SROCC to keep, in (0, 1] (e.g. 0.99), 'recipe' or 'none', got {value!r}"
        ) from None
    return number


def _position(value: str):
    parts = [p.strip() for p in value.split(",")]
    parsed = [int(p) if p.lstrip("-").isdigit() else p for p in parts]
    return parsed[0] if len(parsed) == 1 else parsed


TABLE_SUFFIXES = (".csv", ".md", ".json")


def _table_path(value: str) -> str:
    if os.path.splitext(value)[1].lower() not in TABLE_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"expected a path ending in {', '.join(TABLE_SUFFIXES)} (the table is written in all three formats), got {value!r}"
        )
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {number}")
    return number


def main(argv: list[str] | None = None) -> int:
    """Run one command. A mistake in what was asked prints one line naming it and exits
    non-zero (2 for usage errors, 1 when the input cannot be used, 130 on Ctrl-C);
    ``--debug`` or ``SURGERY_DEBUG=1`` shows the traceback instead."""
    parser = _parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _print_warning
            return _run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("surgery: interrupted", file=sys.stderr)
        return 130
    except UsageError as err:
        if debug:
            raise
        parser.print_usage(sys.stderr)
        print(f"surgery: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, ImportError, OSError, RuntimeError) as err:
        if debug:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"surgery: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 1


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, as the errors are (``--debug``: Python's own, with where it came from)."""
    text = str(message).replace("\n", " ")
    print(f"surgery: warning: {text}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surgery", description=surgery.__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {DEBUG_VARIABLE}=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_debug(p):
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    def add_model_args(p):
        p.add_argument("model", help=f"zoo model name: {', '.join(surgery.list_models())}")
        p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="constructor argument")
        add_weights_args(p)
        p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="example input size")

    def add_weights_args(p):
        p.add_argument("--checkpoint", help="state_dict to load into the zoo model (your trained weights)")
        p.add_argument(
            "--random-weights", action="store_true",
            help="build zoo models with random weights (their scores mean nothing); without it, a zoo model loads "
            "the weights that ship with it, or needs --checkpoint",
        )

    def add_image_args(p, scores_required: bool):
        """A folder of images, the CSV of their MOS and the size they are read at (eval: the
        CSV and its scores are optional; robustify trains on them)."""
        p.add_argument("--images", required=True, help="folder of images")
        p.add_argument("--csv", required=scores_required, help="CSV listing the images and their MOS")
        p.add_argument("--image-column", default="image")
        p.add_argument("--score-column", required=scores_required, help="MOS column of the CSV")
        p.add_argument("--input-size", type=int, nargs=3, default=(3, 224, 224), metavar=("C", "H", "W"),
                       help="size the images are resized to (C is 3: images are read as RGB)")

    p_harden = sub.add_parser("harden", help="splice RobustBlocks into a zoo model and save it")
    add_debug(p_harden)
    add_model_args(p_harden)
    p_harden.add_argument("--position", default="auto", type=_position, help="'auto', a block number, a module name, or a comma list")
    p_harden.add_argument("--ortho", default="cayley", choices=ortho_names(), help="orthogonal convolution")
    p_harden.add_argument("--prune", choices=("l2",), help="remove about --amount of the weights after splicing")
    p_harden.add_argument("--amount", type=_fraction, help="fraction of the weights --prune removes (default 0.10)")
    p_harden.add_argument("--paper-code-block", action="store_true", help="the block as the paper's code builds it")
    p_harden.add_argument("--out", required=True, help="where to save the hardened model")

    p_locate = sub.add_parser("locate", help="list the conv blocks a RobustBlock can go before")
    add_debug(p_locate)
    add_model_args(p_locate)

    p_describe = sub.add_parser("describe", help="summarise a model saved by 'surgery harden'")
    add_debug(p_describe)
    p_describe.add_argument("path")

    p_eval = sub.add_parser("eval", help="attack models on a folder of images and report robustness")
    add_debug(p_eval)
    p_eval.add_argument("models", nargs="+", help="zoo model names or files saved by 'surgery harden'")
    p_eval.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="for zoo models")
    add_weights_args(p_eval)
    add_image_args(p_eval, scores_required=False)
    p_eval.add_argument("--limit", type=_positive_int, help="use only the first N images")
    p_eval.add_argument("--attack-images", type=_positive_int, help="attack only the first N images (all are scored)")
    p_eval.add_argument(
        "--attacks", nargs="+", default=list(DEFAULT_ATTACKS),
        help="the paper's protocol: pgd-K (pgd-1, pgd-8), uap, stadv; strong: pgd-K-rs (e.g. pgd-50-rs), apgd, apgd-K; "
        "black-box (score-based, a masking check): square-Q (Q queries, e.g. square-1000); "
        "the paper code's own attack (exceeds the budget): paper-pgd-K",
    )
    p_eval.add_argument("--direction", choices=("up", "down", "both"), default="up",
                        help="raise the score, lower it, or both (lowering rows are named '<attack> down')")
    p_eval.add_argument("--seed", type=int, default=0, help="seed of the random attacks (random starts, Square)")
    p_eval.add_argument(
        "--protocol", choices=("paper", "msu"), default="paper",
        help="paper: eps 2,4,6,8,10/255, gains normalised by the model's score range (else the images'); msu: the MSU "
        "benchmarks' eps 2,4,8,16/255 and gains normalised by the clean scores' range on these images",
    )
    p_eval.add_argument("--batch-size", type=_positive_int, default=8)
    p_eval.add_argument("--num-workers", type=int, default=0, help="processes that read the images")
    p_eval.add_argument("--channels-last", action="store_true",
                        help="run the convolutions in the channels-last layout (faster; off for models that .view feature maps)")
    p_eval.add_argument("--cache", help="folder to resume interrupted sweeps from")
    p_eval.add_argument(
        "--out", default="results.csv", type=_table_path,
        help="a .csv, .md or .json path; the table is written in all three formats beside it (same stem)",
    )
    p_eval.add_argument("--plots", help="folder for the AbsGain-vs-eps and trade-off plots")

    p_robustify = sub.add_parser(
        "robustify", help="make a zoo model or a saved model harder to fool (the robust recipe) and save it"
    )
    add_debug(p_robustify)
    p_robustify.add_argument("model", help=f"zoo model name ({', '.join(surgery.list_models())}) or a file saved by surgery")
    p_robustify.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="for zoo models")
    add_weights_args(p_robustify)
    add_image_args(p_robustify, scores_required=True)
    p_robustify.add_argument("--val-images", help="folder of the validation images (default: --images)")
    p_robustify.add_argument("--val-csv", help="CSV of held-out validation images and their MOS (same columns)")
    p_robustify.add_argument("--val-fraction", type=_fraction, help="hold out this fraction of the training CSV for validation")
    p_robustify.add_argument("--recipe", default="robust", choices=sorted(RECIPES), help="what robustify runs (default: robust)")
    p_robustify.add_argument("--target", type=_target, default="recipe",
                             help="choose the blend on the validation images (--val-csv or --val-fraction) to keep at least "
                                  "this share of their SROCC (default: the recipe's, 0.99 for robust; without validation "
                                  "images, or 'none': the recipe's fixed blend)")
    p_robustify.add_argument("--epochs", type=_positive_int, help="instead of the recipe's")
    p_robustify.add_argument("--lr", type=float, help="instead of the recipe's")
    p_robustify.add_argument("--schedule", choices=sorted(SCHEDULES), help="the learning rate's, instead of the recipe's")
    p_robustify.add_argument("--batch-size", type=_positive_int, help="instead of the recipe's")
    p_robustify.add_argument("--seed", type=int, default=0)
    p_robustify.add_argument("--checkpoint-dir", help="folder of resumable fine-tune checkpoints")
    p_robustify.add_argument("--out", required=True, help="where to save the robust model (load it with surgery.load)")

    p_models = sub.add_parser("models", help="list the zoo models")
    add_debug(p_models)
    p_models.add_argument("filter", nargs="?", default="", help="shell pattern, e.g. 'default*'")
    p_models.add_argument("--pretrained", action="store_true", help="only the models whose weights ship with the package")

    p_demo = sub.add_parser("demo", help="score, attack, harden and re-attack the default model on sample photos")
    add_debug(p_demo)
    p_demo.add_argument("--out", default="outputs/demo", help="folder for the table and plots")

    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from .demo import run

        run(args.out)
        return 0
    if args.command == "eval":
        return _evaluate(args)
    if args.command == "robustify":
        return _robustify(args)
    if args.command == "models":
        names = surgery.list_models(args.filter, pretrained=args.pretrained)
        if not names:
            kind = "pretrained model" if args.pretrained else "model"
            print(f"surgery: error: no {kind} matches {args.filter!r}; 'surgery models' lists them all", file=sys.stderr)
            return 1
        print("\n".join(names))
        return 0
    if args.command == "describe":
        print(surgery.describe(surgery.load(args.path)))
        return 0
    if args.command == "harden" and args.amount is not None and args.prune is None:
        raise UsageError("--amount sets how much --prune removes: add --prune l2, or drop --amount")
    model, _ = _zoo_model(args.model, _model_kwargs(args.model_arg), args.checkpoint, args.random_weights)
    model_map = surgery.locate(model, input_size=args.input_size)
    if args.command == "locate":
        print(model_map)
        return 0
    try:
        model_map.resolve(args.position)
    except ValueError as err:
        raise UsageError(f"--position: {str(err).splitlines()[0]} ('surgery locate {args.model}' lists the blocks)") from err
    block = dict(surgery.PAPER_CODE_BLOCK) if args.paper_code_block else {"ortho": args.ortho}
    amount = {} if args.amount is None else {"amount": args.amount}
    robust = surgery.harden(model, position=args.position, input_size=args.input_size, prune=args.prune, **amount, **block)
    surgery.save(robust, args.out)
    print(surgery.describe(robust))
    print(f"saved to {args.out}")
    return 0


RANDOM_WEIGHTS = "random weights"


def _pretrained(name: str, kwargs: dict, checkpoint: str | None, random_weights: bool) -> bool:
    """Whether to load the weights that ship with a zoo model: yes unless asked otherwise, and a
    model that has none needs the user's checkpoint or an explicit ``--random-weights``."""
    ships = name.lower() in surgery.list_models(pretrained=True)
    asked = kwargs.pop("pretrained", None)
    if asked is not None and not isinstance(asked, bool):
        raise UsageError(f"--model-arg pretrained must be true or false, got {asked!r}")
    if asked and not ships:
        raise UsageError(f"no weights ship for {name!r}: pass --checkpoint FILE with yours")
    if random_weights and (asked or checkpoint):
        raise UsageError("--random-weights contradicts " + ("--checkpoint" if checkpoint else "pretrained=true"))
    if asked is False:
        random_weights = True
    if not ships and checkpoint is None and not random_weights:
        raise UsageError(
            f"no weights ship for {name!r} and nothing is downloaded: pass --checkpoint FILE with its trained weights, "
            "or --random-weights to use random ones (their scores mean nothing)"
        )
    if random_weights and checkpoint is None:
        warnings.warn(f"{name} has random weights (--random-weights): its scores mean nothing", UserWarning, stacklevel=2)
    return ships and not random_weights and checkpoint is None  # a checkpoint carries every weight


def _zoo_model(name: str, kwargs: dict, checkpoint: str | None = None, random_weights: bool = False) -> tuple[nn.Module, bool]:
    """A zoo model with its weights, and whether they are random."""
    if name.lower() not in surgery.list_models():
        raise UsageError(f"unknown model {name!r}: choose one of {', '.join(surgery.list_models())} or pass a saved file")
    kwargs = dict(kwargs)
    pretrained = _pretrained(name, kwargs, checkpoint, random_weights)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # random weights are the same in every run and in every process under torchrun
            model = surgery.create_model(name, pretrained=pretrained, checkpoint=checkpoint, **kwargs)
    except TypeError as err:
        raise UsageError(f"{name} does not take --model-arg {sorted(kwargs)}: {err}") from err
    return model, not pretrained and checkpoint is None


def _model_names(specs: list[str]) -> list[str]:
    """One table name per model: the file stem, or as much of the path as tells two files
    apart (``runA/best``, ``runB/best``); the same model named twice is refused."""
    if len(set(specs)) != len(specs):
        twice = sorted({s for s in specs if specs.count(s) > 1})
        raise UsageError(f"model(s) {', '.join(twice)} given more than once")
    stems = [os.path.splitext(os.path.normpath(s))[0] for s in specs]
    parts = [stem.split(os.sep) for stem in stems]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            break
        depth += 1
    if len(set(names)) != len(names):  # e.g. "a.pt" and "a.pth": keep the whole paths
        names = [os.path.normpath(s) for s in specs]
    return names


def _image_size(args) -> tuple[int, int]:
    """(H, W) of ``--input-size 3 H W``, the size images are read at."""
    channels, height, width = args.input_size
    if channels != 3 or min(height, width) < 1:
        raise UsageError(f"--input-size must be 3 H W with H, W >= 1 (images are read as RGB), got {' '.join(map(str, args.input_size))}")
    return height, width


@distributed.joins_torchrun(lambda args: torch.device("cpu"))
def _evaluate(args) -> int:
    """Under torchrun every rank attacks its share of the images; rank 0 writes and prints the table."""
    from torch.utils.data import Subset

    from .data import ImageFolder
    from .report import plot_curves, plot_tradeoff

    try:
        resolve_attacks(args.attacks)
    except ValueError as err:
        raise UsageError(str(err)) from err
    height, width = _image_size(args)
    zoo = [m for m in args.models if not os.path.isfile(m)]
    if args.checkpoint and len(zoo) != 1:
        raise UsageError(f"--checkpoint loads into one zoo model, but {len(zoo)} are named ({', '.join(zoo) or 'none'})")
    names = _model_names(args.models)
    models = {}
    for name, spec in zip(names, args.models):
        if os.path.isfile(spec):
            models[name] = surgery.load(spec).eval()
            continue
        model, random_weights = _zoo_model(spec, _model_kwargs(args.model_arg), args.checkpoint, args.random_weights)
        models[f"{name} ({RANDOM_WEIGHTS})" if random_weights else name] = model.eval()
    images = ImageFolder(args.images, args.csv, args.image_column, args.score_column, size=(height, width))
    if args.limit:
        images = Subset(images, range(min(args.limit, len(images))))
    protocol = surgery.MSU_PROTOCOL if args.protocol == "msu" else {}
    subset = None if args.attack_images is None else range(min(args.attack_images, len(images)))
    table = surgery.compare(
        models, images, None, args.attacks, direction=args.direction, seed=args.seed, batch_size=args.batch_size,
        num_workers=args.num_workers, cache=args.cache, attack_subset=subset, channels_last=args.channels_last, **protocol,
    )
    if distributed.rank() != 0:
        return 0
    stem = os.path.splitext(args.out)[0]
    for suffix in TABLE_SUFFIXES:
        table.write(stem + suffix)
    print(table.to_markdown())
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
        plot_curves(table, os.path.join(args.plots, "abs_gain_vs_eps.png"))
        if args.score_column is not None and any(key.endswith(" abs_gain_auc") for summary in table.summaries for key in summary):
            plot_tradeoff(table, os.path.join(args.plots, "tradeoff.png"))
    print(f"wrote {stem}.csv/.md/.json" + (f" and plots in {args.plots}" if args.plots else ""))
    return 0


def _robustify(args) -> int:
    """The recipe on a folder of images; the calibration report and the saved file."""
    from torch.utils.data import Subset

    from .data import ImageFolder

    height, width = _image_size(args)
    if args.val_csv and args.val_fraction:
        raise UsageError("--val-csv and --val-fraction both give validation images: pass one")
    if args.target not in ("recipe", None) and not (args.val_csv or args.val_fraction):
        raise UsageError("--target chooses the blend on validation images: add --val-csv FILE or --val-fraction 0.1")
    if args.val_images and not args.val_csv:
        raise UsageError("--val-images is the folder of --val-csv's images: add --val-csv FILE (--val-fraction holds out training images)")
    if args.val_csv and os.path.abspath(args.val_csv) == os.path.abspath(args.csv):
        raise UsageError(
            "--val-csv is the training CSV: the blend would be chosen on training images; pass a held-out CSV or --val-fraction"
        )
    if os.path.isfile(args.model):
        zoo_only = [flag for flag, given in (("--checkpoint", args.checkpoint), ("--model-arg", args.model_arg),
                                              ("--random-weights", args.random_weights)) if given]
        if zoo_only:
            raise UsageError(f"{' and '.join(zoo_only)} set up zoo models: {args.model} is a saved file, loaded as it was saved")
        model = surgery.load(args.model)
    else:
        model, _ = _zoo_model(args.model, _model_kwargs(args.model_arg), args.checkpoint, args.random_weights)
    columns = {"image_column": args.image_column, "score_column": args.score_column, "size": (height, width)}
    train = ImageFolder(args.images, args.csv, **columns)
    val = None
    if args.val_csv:
        val = ImageFolder(args.val_images or args.images, args.val_csv, **columns)
    elif args.val_fraction:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed)).tolist()
        held = max(2, round(args.val_fraction * len(train)))
        if held >= len(train):
            raise UsageError(f"--val-fraction {args.val_fraction} leaves no training images of {len(train)}")
        train, val = Subset(train, sorted(order[held:])), Subset(train, sorted(order[:held]))
    given = {"epochs": args.epochs, "lr": args.lr, "schedule": args.schedule, "batch_size": args.batch_size}
    options = {k: v for k, v in given.items() if v is not None}
    robust, result = surgery.robustify(
        model, train, val, args.recipe, target=args.target, seed=args.seed, checkpoint_dir=args.checkpoint_dir,
        **options,
    )
    surgery.save(robust, args.out)
    if result.epoch is not None:
        validation = next((h["val_srocc"] for h in result.history if h["epoch"] == result.epoch and "val_srocc" in h), None)
        blended = result.calibration is not None or RECIPES[args.recipe].blend is not None
        print(f"the fine-tune's epoch {result.epoch}" + ("" if validation is None else f": validation SROCC {validation:.4f}")
              + (" before the blend" if blended else ""))
    print(f"saved to {args.out}")  # robustify printed the calibration report
    return 0


if __name__ == "__main__":
    sys.exit(main())
