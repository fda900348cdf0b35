"""What every ``slg`` command shares: the parser that reports bad input in one line, list and
number types, ``KEY=VALUE`` overrides, and the checks of output paths before any work."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from pipeline.errors import ConfigError


class UsageError(ConfigError):
    """Bad command-line input (exit code 2)."""


# What argparse takes for a negative number rather than an option: its own pattern (-5, -0.5) misses
# -1e-3 and -inf, which then read as an unknown option and leave the one before without its value.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*(e[-+]?\d+)?|\.\d+(e[-+]?\d+)?|inf(inity)?|nan)$", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER  # (argparse's attribute: no option here looks like a number)

    def error(self, message):  # argparse prints usage and exits 2; we want one line naming the value
        raise UsageError(message)


def int_list(text: str) -> list[int]:
    """Comma-separated integers (budgets, sample sizes, n, replica counts); what they may be is the
    consumer's rule (``pipeline.search.methods.check_budgets`` for budgets)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def distinct_positive_ints(text: str) -> list[int]:
    """Distinct integers >= 1 (sample sizes m, n, replica counts): a repeated one would count its
    results twice."""
    values = int_list(text)
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {min(values)} in {text!r}")
    return distinct(values, text)


def name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def distinct_names(text: str) -> list[str]:
    """Distinct names (worlds, banks), at least one: one listed twice would be counted twice."""
    names = name_list(text)
    if not names:
        raise argparse.ArgumentTypeError(f"expected at least one name, got {text!r}")
    return distinct(names, text)


def non_empty(text: str) -> str:
    """A name or a path that is not blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a name, got {text!r}")
    return text


def distinct_banks(text: str) -> list[str]:
    """Distinct banks: paths or URLs, a local one compared by the file it names (``b.jsonl``,
    ``./b.jsonl`` and ``file:///.../b.jsonl`` are one bank, which would be counted twice)."""
    from pipeline.outputs.destinations import local_path

    banks = distinct_names(text)
    files = [bank if local_path(bank) is None else os.path.realpath(local_path(bank)) for bank in banks]
    for index, file in enumerate(files):
        if file in files[:index]:
            raise argparse.ArgumentTypeError(f"{banks[files.index(file)]} and {banks[index]} are the same bank "
                                             f"in {text!r}")
    return banks


def distinct(values: list, text: str) -> list:
    repeated = [value for index, value in enumerate(values) if value in values[:index]]
    if repeated:
        raise argparse.ArgumentTypeError(f"{repeated[0]} is listed twice in {text!r}")
    return values


def int_at_least(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


def fraction(text: str) -> float:
    """An argparse type: a share of a budget, in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {value}")
    return value


seed = int_at_least(0)  # numpy's generators take seeds >= 0 only
positive_int = int_at_least(1)


def world_params(pairs: list[str] | None) -> dict[str, float]:
    """``--param KEY=VALUE`` pairs of a world family, as numbers."""
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--param expects KEY=VALUE, got {pair!r}")
        if key.strip() in params:  # as a budget or method listed twice: the second would silently win
            raise UsageError(f"--param {key.strip()} is given twice")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--param {key.strip()} expects a number, got {value!r}") from None
    return params


def add_overrides(parser, what: str = "OmegaConf dot-list overrides of the config") -> None:
    """Every command that reads the config takes its overrides the same way: ``KEY=VALUE`` positionals."""
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=what)


INPUT_OPTIONS = ("bank", "rewards", "real", "source")  # what commands read (but `slg collect`, whose bank is its output)


def check_output_paths(args) -> None:
    """Every file option a command writes, checked before its work starts (a folder or a file in
    the way would otherwise fail only at the end, after minutes of work), and none of them one of
    the command's inputs (``--out`` naming the bank replaced the bank with the results)."""
    from pipeline.outputs.destinations import check_output_target, check_plot_target

    written = {option: getattr(args, option, None) for option in ("out", "texts", "plot")}
    written = {option: target for option, target in written.items() if target is not None}
    for option, target in written.items():
        if option == "plot":
            check_plot_target(target)
        else:
            check_output_target(target, f"--{option}")
    inputs = [getattr(args, option, None) for option in INPUT_OPTIONS if getattr(args, "command", None) != "collect"]
    inputs = [path for value in inputs if value for path in (value if isinstance(value, list) else [value])]
    for option, target in written.items():
        for source in inputs:
            if (clash := _clash(target, source)) is not None:
                raise UsageError(f"--{option} {target!r} {clash}")


def _clash(target: str, source: str) -> str | None:
    """Why writing ``target`` would spoil the input ``source`` (None where it would not): the same
    file, or a path in an input folder (a bank of shards: a new .parquet there is one more shard)."""
    from pipeline.outputs.destinations import local_path

    output, given = local_path(target), local_path(source)
    if output is None or given is None:
        return f"is the input {source!r}: writing it would replace it" if target == source else None
    if output.exists() and given.exists() and os.path.samefile(output, given):
        return f"is the input {source!r}: writing it would replace it"
    if given.is_dir() and Path(os.path.realpath(given)) in Path(os.path.realpath(output)).parents:
        return f"lies in the input folder {source!r}: it would join what is read there"
    return None


def write_json(target: str, payload) -> None:
    """A JSON file at a path or a URL (``--out`` of every command)."""
    from pipeline.outputs.destinations import write_text
    from pipeline.outputs.files import json_text

    write_text(target, json_text(payload, indent=2) + "\n")
