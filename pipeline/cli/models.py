"""The commands that write small models for the CPU engine path: ``make-tiny-models``, ``make-toy-models``."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.cli.arguments import UsageError, seed, write_json


def add_parsers(commands) -> None:
    tiny = commands.add_parser("make-tiny-models", help="write a tiny random-weight generator and RM for CPU tests")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=seed, default=0)
    tiny.set_defaults(handler=run_make_tiny_models)

    toy = commands.add_parser("make-toy-models", help="train the toy generator and reward model (CPU, minutes)")
    toy.add_argument("directory", help="writes DIRECTORY/generator and DIRECTORY/reward (new, empty, or its own earlier output)")
    toy.add_argument("--seed", type=seed, default=0)
    toy.add_argument("--report", action="store_true", help="then measure the quality bands on held-out problems")
    toy.add_argument("--report-only", action="store_true", help="measure the toy models already in DIRECTORY; train nothing")
    toy.add_argument("--out", help="write the report as JSON here")
    toy.set_defaults(handler=run_make_toy_models)


def run_make_tiny_models(args) -> int:
    from pipeline.toy.tiny import make_tiny_models

    paths = make_tiny_models(args.directory, seed=args.seed)
    print("\n".join(f"{role}: {path}" for role, path in paths.items()))
    return 0


def run_make_toy_models(args) -> int:
    if args.report_only:
        for role in ("generator", "reward"):
            if not (Path(args.directory) / role / "config.json").is_file():
                raise UsageError(f"{args.directory!r} holds no toy {role} (no {role}/config.json); make them first")
    else:
        from pipeline.toy.training import make_toy_models

        started = time.perf_counter()
        paths = make_toy_models(args.directory, seed=args.seed)
        print("\n".join(f"{role}: {path}" for role, path in paths.items()))
        print(f"made in {time.perf_counter() - started:.0f} s")
    if args.report or args.report_only:
        from pipeline.toy.report import report_toy_models

        report, text = report_toy_models(args.directory)
        print(text)
        if args.out:
            write_json(args.out, report)
    return 0
