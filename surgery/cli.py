"""Command line: ``surgery harden | describe | locate | demo`` (also ``python -m surgery``)."""
from __future__ import annotations

import argparse
import json
import sys

import surgery


def _model_kwargs(pairs: list[str]) -> dict:
    """KEY=VALUE pairs; values parsed as JSON when they can be (numbers, lists), else strings."""
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--model-arg expects KEY=VALUE, got {pair!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def _position(value: str):
    parts = [p.strip() for p in value.split(",")]
    parsed = [int(p) if p.lstrip("-").isdigit() else p for p in parts]
    return parsed[0] if len(parsed) == 1 else parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="surgery", description=surgery.__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_model_args(p):
        p.add_argument("model", help=f"zoo model name: {', '.join(surgery.list_models())}")
        p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="constructor argument")
        p.add_argument("--checkpoint", help="state_dict to load into the model first")
        p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="example input size")

    p_harden = sub.add_parser("harden", help="splice RobustBlocks into a zoo model and save it")
    add_model_args(p_harden)
    p_harden.add_argument("--position", default="auto", type=_position, help="'auto', a block number, a module name, or a comma list")
    p_harden.add_argument("--ortho", default="cayley", help="cayley | aol | aoc")
    p_harden.add_argument("--out", required=True, help="where to save the hardened model")

    p_locate = sub.add_parser("locate", help="list the conv blocks a RobustBlock can go before")
    add_model_args(p_locate)

    p_describe = sub.add_parser("describe", help="summarise a model saved by 'surgery harden'")
    p_describe.add_argument("path")

    p_demo = sub.add_parser("demo", help="harden a built-in model on sample photos")
    p_demo.add_argument("--model", default="linearity")
    p_demo.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        run(args.model, **_model_kwargs(args.model_arg))
        return 0
    if args.command == "describe":
        print(surgery.describe(surgery.load(args.path)))
        return 0
    model = surgery.create_model(args.model, checkpoint=args.checkpoint, **_model_kwargs(args.model_arg))
    if args.command == "locate":
        print(surgery.locate(model, input_size=args.input_size))
        return 0
    robust = surgery.harden(model, position=args.position, ortho=args.ortho, input_size=args.input_size)
    surgery.save(robust, args.out)
    print(surgery.describe(robust))
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
