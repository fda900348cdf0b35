"""``slg``: the parser assembled from the command groups, and the exit codes.

Exit codes: 0 success; 2 bad input or configuration (``ConfigError``), with a one-line message
naming the bad value and no traceback; 130 interrupted (Ctrl-C) and 143 terminated (SIGTERM), each
with one line, what finished kept; 1 anything else, also in one line, with the traceback in the
log file the line names.
"""

from __future__ import annotations

import sys

from pipeline import signals
from pipeline.cli import jobs, models, offline
from pipeline.cli.arguments import Parser, check_output_paths
from pipeline.errors import ConfigError


def build_parser() -> Parser:
    parser = Parser(prog="slg", description="Scaling-Law Guided search: test-time compute scaling.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    jobs.add_parsers(commands)
    models.add_parsers(commands)
    offline.add_parsers(commands)
    return parser


def parse(argv: list[str]):
    """The command's arguments; ``KEY=VALUE`` overrides may stand anywhere among its options
    (argparse alone takes them only after the last option)."""
    parser = build_parser()
    helps = argv and (argv[0] == "-h" or (len(argv[0]) > 2 and "--help".startswith(argv[0])))  # argparse's abbreviations
    if argv and argv[0].startswith("-") and not helps:  # argparse would only say the command is missing
        parser.error(f"unrecognized argument {argv[0]!r}: the command comes first (slg COMMAND ...; slg --help lists them)")
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(item.startswith("-") or "=" not in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    from pipeline.logs import configure_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]  # `slg` alone runs the embedded default
    configure_logging()
    with signals.sigterm_raises():
        return _run(argv)


def _run(argv: list[str]) -> int:
    from pipeline.logs import record_traceback

    try:
        args = parse(argv)
        check_output_paths(args)
        return args.handler(args)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (signals.Terminated, plain when it came through a ray.get)
        if signals.received():
            return _terminated()
        print("slg: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if signals.received():  # Ray's processes got the same signal, and the run failed on that first
            return _terminated()
        if isinstance(_unwrapped(error), ConfigError):  # the user's input was wrong: say which, nothing more
            print(f"slg: error: {_one_line(error)}", file=sys.stderr)
            return 2
        where = record_traceback(error)
        print(f"slg: error: {type(_unwrapped(error)).__name__}: {_one_line(error)} (traceback in {where})",
              file=sys.stderr)
        return 1


def _terminated() -> int:
    print(signals.MESSAGE, file=sys.stderr)
    return signals.EXIT_CODE


def _one_line(error: BaseException) -> str:
    """The first line of an error's message, unwrapped from Ray's task error when it crossed an actor boundary."""
    text = str(_unwrapped(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unwrapped(error: BaseException) -> BaseException:
    cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError carries the actor's exception
    return cause if isinstance(cause, BaseException) else error


if __name__ == "__main__":
    sys.exit(main())
