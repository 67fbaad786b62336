"""Command line: ``surgery harden | locate | describe | eval | demo`` (also ``python -m surgery``)."""
from __future__ import annotations

import argparse
import json
import os
import sys

import surgery
from surgery.evaluation import DEFAULT_ATTACKS, resolve_attacks
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


def _position(value: str):
    parts = [p.strip() for p in value.split(",")]
    parsed = [int(p) if p.lstrip("-").isdigit() else p for p in parts]
    return parsed[0] if len(parsed) == 1 else parsed


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surgery", description=surgery.__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {DEBUG_VARIABLE}=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_debug(p):
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    def add_model_args(p):
        p.add_argument("model", help=f"zoo model name: {', '.join(surgery.list_models())}")
        p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="constructor argument")
        p.add_argument("--checkpoint", help="state_dict to load into the model first")
        p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="example input size")

    p_harden = sub.add_parser("harden", help="splice RobustBlocks into a zoo model and save it")
    add_debug(p_harden)
    add_model_args(p_harden)
    p_harden.add_argument("--position", default="auto", type=_position, help="'auto', a block number, a module name, or a comma list")
    p_harden.add_argument("--ortho", default="cayley", choices=ortho_names(), help="orthogonal convolution")
    p_harden.add_argument("--prune", choices=("l2",), help="remove about --amount of the weights after splicing")
    p_harden.add_argument("--amount", type=float, default=0.10, help="fraction of the weights --prune removes")
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
    p_eval.add_argument("--images", required=True, help="folder of images")
    p_eval.add_argument("--csv", help="CSV listing the images (and their MOS)")
    p_eval.add_argument("--image-column", default="image")
    p_eval.add_argument("--score-column", default=None, help="MOS column of the CSV")
    p_eval.add_argument("--input-size", type=int, nargs=3, default=(3, 224, 224), metavar=("C", "H", "W"),
                        help="size the images are resized to (C is 3: images are read as RGB)")
    p_eval.add_argument("--limit", type=_positive_int, help="use only the first N images")
    p_eval.add_argument(
        "--attacks", nargs="+", default=list(DEFAULT_ATTACKS),
        help="the paper's protocol: pgd-K (pgd-1, pgd-8), uap, stadv; strong: pgd-K-rs (e.g. pgd-50-rs), apgd, apgd-K; "
        "the paper code's own attack (exceeds the budget): paper-pgd-K",
    )
    p_eval.add_argument("--batch-size", type=_positive_int, default=8)
    p_eval.add_argument("--cache", help="folder to resume interrupted sweeps from")
    p_eval.add_argument("--out", default="results.csv", help=".csv, .md or .json (all three are written beside it)")
    p_eval.add_argument("--plots", help="folder for the AbsGain-vs-eps and trade-off plots")

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
    if args.command == "models":
        print("\n".join(surgery.list_models(args.filter, pretrained=args.pretrained)))
        return 0
    if args.command == "describe":
        print(surgery.describe(surgery.load(args.path)))
        return 0
    model = _zoo_model(args.model, _model_kwargs(args.model_arg), args.checkpoint)
    if args.command == "locate":
        print(surgery.locate(model, input_size=args.input_size))
        return 0
    block = dict(surgery.PAPER_CODE_BLOCK) if args.paper_code_block else {"ortho": args.ortho}
    robust = surgery.harden(
        model, position=args.position, input_size=args.input_size, prune=args.prune, amount=args.amount, **block
    )
    surgery.save(robust, args.out)
    print(surgery.describe(robust))
    print(f"saved to {args.out}")
    return 0


def _zoo_model(name: str, kwargs: dict, checkpoint: str | None = None):
    if name.lower() not in surgery.list_models():
        raise UsageError(f"unknown model {name!r}: choose one of {', '.join(surgery.list_models())} or pass a saved file")
    try:
        return surgery.create_model(name, checkpoint=checkpoint, **kwargs)
    except TypeError as err:
        raise UsageError(f"{name} does not take --model-arg {sorted(kwargs)}: {err}") from err


def _load_model(spec: str, kwargs: dict):
    return surgery.load(spec) if os.path.isfile(spec) else _zoo_model(spec, kwargs)


def _evaluate(args) -> int:
    from .data import ImageFolder
    from .report import plot_curves, plot_tradeoff

    try:
        resolve_attacks(args.attacks)
    except ValueError as err:
        raise UsageError(str(err)) from err
    channels, height, width = args.input_size
    if channels != 3 or min(height, width) < 1:
        raise UsageError(f"--input-size must be 3 H W with H, W >= 1 (images are read as RGB), got {' '.join(map(str, args.input_size))}")
    dataset = ImageFolder(args.images, args.csv, args.image_column, args.score_column, size=(height, width))
    images, mos = dataset.tensors()
    if args.limit:
        images, mos = images[: args.limit], None if mos is None else mos[: args.limit]
    models = {os.path.splitext(os.path.basename(m))[0]: _load_model(m, _model_kwargs(args.model_arg)).eval() for m in args.models}
    table = surgery.compare(models, images, mos, args.attacks, batch_size=args.batch_size, cache=args.cache)
    stem = os.path.splitext(args.out)[0]
    for suffix in (".csv", ".md", ".json"):
        table.write(stem + suffix)
    print(table.to_markdown())
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
        plot_curves(table, os.path.join(args.plots, "abs_gain_vs_eps.png"))
        if mos is not None and any("pgd-1" in a for a in args.attacks):
            plot_tradeoff(table, os.path.join(args.plots, "tradeoff.png"))
    print(f"wrote {stem}.csv/.md/.json" + (f" and plots in {args.plots}" if args.plots else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
