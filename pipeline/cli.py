"""The ``slg`` command line: argument parsing, error reporting and output files; no algorithms.

Exit codes (SPEC.md): 0 success; 2 bad input or configuration, with a one-line message naming the
bad value and no traceback; 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.policies import POLICIES

DEFAULT_METHODS = ["bon", "slg", "slg_adaptive", "oracle"]


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage and exits 2; we want one line naming the value
        raise UsageError(message)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return values


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _params(pairs: list[str]) -> dict[str, float]:
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--param {key.strip()} expects a number, got {value!r}") from None
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slg", description="Scaling-Law Guided search: test-time compute scaling.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    replay = commands.add_parser("replay", help="evaluate policies offline on a reward bank or a simulated world")
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument("--bank", help="a reward bank (JSONL, SPEC.md format)")
    source.add_argument("--world", help="a simulated world family: " + ", ".join(_world_names()))
    replay.add_argument("--param", action="append", metavar="KEY=VALUE", help="world parameter (repeatable)")
    replay.add_argument("--prompts", type=int, help="fresh prompts drawn from the world (required with --world)")
    replay.add_argument("--methods", type=_name_list, default=DEFAULT_METHODS, help="comma-separated methods")
    replay.add_argument("--budgets", type=_int_list, default=[100, 1000], help="comma-separated budgets N")
    replay.add_argument("--repeats", type=int, default=100, help="repetitions per prompt")
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    replay.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                        help="search option, e.g. --set tail_fraction=0.3 --set adaptive.keep_fraction=0.5")
    replay.add_argument("--out", help="write the results as JSON here")

    sim_bank = commands.add_parser("sim-bank", help="write a reward bank sampled from a simulated world")
    sim_bank.add_argument("--family", required=True, help="world family: " + ", ".join(_world_names()))
    sim_bank.add_argument("--param", action="append", metavar="KEY=VALUE")
    sim_bank.add_argument("--prompts", type=int, required=True)
    sim_bank.add_argument("--states", type=int, required=True)
    sim_bank.add_argument("--completions", type=int, required=True)
    sim_bank.add_argument("--seed", type=int, default=0)
    sim_bank.add_argument("--out", required=True)

    run = commands.add_parser("run", help="run the pipeline (no arguments: the embedded default, simulated engines)")
    run.add_argument("--config", help="a YAML config (see configs/)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="OmegaConf dot-list overrides")

    collect = commands.add_parser("collect", help="write a reward bank from the configured engines (any backend)")
    collect.add_argument("--config", help="a YAML config (engines, data, seed), as for `slg run`")
    collect.add_argument("--states", type=int, required=True, help="states per prompt (S)")
    collect.add_argument("--completions", type=int, required=True, help="scored rollouts per state (M)")
    collect.add_argument("--out", help="the bank (JSONL); default OUTPUT_DIR/bank.jsonl")
    collect.add_argument("--texts", help="also write state and response texts to this JSONL side file "
                                         "(one line per bank line, same shape)")
    collect.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="OmegaConf dot-list overrides")

    bench = commands.add_parser("bench", help="throughput: the pipeline, against a bare engine, across replicas")
    bench.add_argument("--config", help="a YAML config (engines), as for `slg run`")
    bench.add_argument("--prompts", type=int, default=16,
                       help="prompts (per replica with --replicas); the data's are cycled when it has fewer")
    bench.add_argument("--budget", type=int, default=64)
    bench.add_argument("--method", default="slg")
    bench.add_argument("--raw", action="store_true", help="also run the same requests on one bare engine")
    bench.add_argument("--free-rm", action="store_true",
                       help="score at no cost (meaningless rewards): the generator path alone, without an RM competing for CPU")
    bench.add_argument("--replicas", type=_int_list, help="scaling: generator replica counts, e.g. 1,2,4,8")
    bench.add_argument("--out", help="write the measurements as JSON here")
    bench.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="OmegaConf dot-list overrides")

    tiny = commands.add_parser("make-tiny-models", help="write a tiny random-weight generator and RM for CPU tests")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)

    toy = commands.add_parser("make-toy-models", help="train the toy generator and reward model (CPU, minutes)")
    toy.add_argument("directory", help="writes DIRECTORY/generator and DIRECTORY/reward (new, empty, or its own earlier output)")
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--report", action="store_true", help="then measure the quality bands on held-out problems")
    toy.add_argument("--report-only", action="store_true", help="measure the toy models already in DIRECTORY; train nothing")
    toy.add_argument("--out", help="write the report as JSON here")

    curves = commands.add_parser("curves", help="check predicted best-of-n against exact pool values")
    target = curves.add_mutually_exclusive_group(required=True)
    target.add_argument("--bank", help="a reward bank: every state's pool is checked")
    target.add_argument("--real", help="a folder of ../shared/data/real (or one of its data sets)")
    target.add_argument("--world", help="a simulated world family, or 'all' for every family")
    curves.add_argument("--param", action="append", metavar="KEY=VALUE", help="world parameter (repeatable)")
    curves.add_argument("--states", type=int, default=200, help="world states drawn (with --world)")
    curves.add_argument("--plot", help="write the error-vs-n plot (PNG) here")
    curves.add_argument("--m", type=_int_list, default=[8, 16, 32], help="samples the prediction sees")
    curves.add_argument("--n", type=_int_list, default=[16, 64, 256], help="n of the predicted best-of-n")
    curves.add_argument("--repeats", type=int, default=200)
    curves.add_argument("--seed", type=int, default=0)
    curves.add_argument("--out", help="write the report as JSON here")
    return parser


def _world_names() -> list[str]:
    from pipeline.worlds import WORLDS
    return sorted(WORLDS)


def _search_config(overrides: list[str] | None):
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from pipeline.config import SearchConfig

    try:
        merged = OmegaConf.merge(OmegaConf.structured(SearchConfig), OmegaConf.from_dotlist(overrides or []))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise UsageError(f"bad search option: {str(error).splitlines()[0]}") from None


def run_replay(args) -> int:
    from pipeline.bank import read_bank
    from pipeline.replay import format_table, replay, results_as_dicts
    from pipeline.worlds import make_world

    for method in args.methods:
        if method not in POLICIES:
            raise UsageError(f"unknown method {method!r}; expected one of {sorted(POLICIES)}")
    config = _search_config(args.overrides)
    if args.world:
        target = make_world(args.world, **_params(args.param))
        label = target.describe()
        if args.prompts is None:
            raise UsageError("--prompts is required with --world")
    else:
        if args.param:
            raise UsageError("--param applies to --world only")
        target, label = read_bank(args.bank), args.bank
    started = time.perf_counter()
    results = replay(target, args.methods, args.budgets, args.repeats, args.prompts, args.seed, config, args.workers)
    elapsed = time.perf_counter() - started
    print(f"replay on {label}: {results[0].prompts} prompts x {args.repeats} repeats, {elapsed:.1f} s")
    print(format_table(results))
    if args.out:
        _write_json(args.out, {"results": results_as_dicts(results), "source": label, "seed": args.seed,
                               "repeats": args.repeats, "elapsed_s": elapsed})
    return 0


def run_sim_bank(args) -> int:
    from pipeline.bank import simulate_bank, write_bank
    from pipeline.worlds import make_world

    world = make_world(args.family, **_params(args.param))
    rows = simulate_bank(world, args.prompts, args.states, args.completions, args.seed)
    write_bank(args.out, rows)
    print(f"wrote {len(rows)} prompts x {args.states} states x {args.completions} rollouts of {world.describe()} "
          f"to {args.out}")
    return 0


def run_curves(args) -> int:
    from pipeline.bank import read_bank
    from pipeline.calibration import calibrate, format_report, plot_report, real_pools, world_states
    from pipeline.worlds import WORLDS, make_world

    if args.real:
        pools = real_pools(args.real)
    elif args.world:
        families = sorted(WORLDS) if args.world == "all" else [args.world]
        if args.states < 1:
            raise UsageError(f"--states must be >= 1, got {args.states}")
        pools = {}
        for family in families:
            world = make_world(family, **_params(args.param))
            bound = world.reward_bounds[1] if np.isfinite(world.reward_bounds[1]) else None
            pools[world.describe()] = (world_states(world, args.states, args.seed), bound)
    else:
        pools = {"bank": ([s for p in read_bank(args.bank) for s in p.state_rewards], None)}
    report = {name: calibrate(values, args.m, args.n, args.repeats, args.seed, upper_bound=bound)
              for name, (values, bound) in pools.items()}
    print(format_report(report))
    if args.out:
        _write_json(args.out, report)
    if args.plot:
        plot_report(report, args.plot)
    return 0


def run_pipeline(args) -> int:
    import logging

    from pipeline.run_config import load_run_config
    from pipeline.runner import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s slg %(message)s", datefmt="%H:%M:%S")
    run(load_run_config(args.config, args.overrides))
    return 0


def run_collect(args) -> int:
    import logging

    from pipeline.run_config import load_run_config
    from pipeline.runner import collect

    logging.basicConfig(level=logging.INFO, format="%(asctime)s slg %(message)s", datefmt="%H:%M:%S")
    config = load_run_config(args.config, list(args.overrides) + ["methods=[bon]", "budgets=[1]"])
    bank = Path(args.out) if args.out else Path(config.output_dir) / "bank.jsonl"
    written = collect(config, args.states, args.completions, bank, Path(args.texts) if args.texts else None)
    print(f"collected {written} prompts into {bank}")
    return 0


def run_bench(args) -> int:
    import logging

    from pipeline.bench import bench_pipeline, bench_raw_engine, bench_scaling, format_metrics, workload_prompts
    from pipeline.run_config import load_run_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s slg %(message)s", datefmt="%H:%M:%S")
    if args.method not in POLICIES:
        raise UsageError(f"unknown method {args.method!r}; expected one of {sorted(POLICIES)}")
    if args.prompts < 1 or args.budget < 1:
        raise UsageError(f"--prompts and --budget must be >= 1, got {args.prompts} and {args.budget}")
    config = load_run_config(args.config, list(args.overrides) + [f"data.num_prompts={args.prompts}",
                                                                  f"methods=[{args.method}]", f"budgets=[{args.budget}]"])
    report: dict = {"command": "slg bench " + " ".join(sys.argv[2:])}
    if args.replicas:
        report["scaling"] = bench_scaling(config, args.prompts, args.method, args.budget, args.replicas)
        for row in report["scaling"]:
            print(f"{row['replicas']} replicas: {row['rollouts_per_s']:.1f} rollouts/s, "
                  f"scaling efficiency {row['scaling_efficiency']:.2f}")
    else:
        measured = bench_pipeline(config, workload_prompts(config.data, args.prompts), args.method, args.budget,
                                  record_requests=args.raw, free_reward=args.free_rm)
        report["pipeline"] = measured["metrics"]
        print(format_metrics(measured["metrics"]))
        if args.raw:
            report["raw"] = bench_raw_engine(config, measured["requests"])
            report["efficiency"] = measured["metrics"]["tokens_per_s"] / report["raw"]["tokens_per_s"]
            print(f"raw engine: {report['raw']['tokens_per_s']:.1f} tokens/s; pipeline efficiency "
                  f"{report['efficiency']:.3f}")
    if args.out:
        _write_json(args.out, report)
    return 0


def run_make_tiny_models(args) -> int:
    from actors.tiny_models import make_tiny_models

    paths = make_tiny_models(args.directory, seed=args.seed)
    print("\n".join(f"{role}: {path}" for role, path in paths.items()))
    return 0


def run_make_toy_models(args) -> int:
    from actors.toy_models import evaluate_toy_models, format_report, make_toy_models

    if args.report_only:
        for role in ("generator", "reward"):
            if not (Path(args.directory) / role / "config.json").is_file():
                raise UsageError(f"{args.directory!r} holds no toy {role} (no {role}/config.json); make them first")
    else:
        started = time.perf_counter()
        paths = make_toy_models(args.directory, seed=args.seed)
        print("\n".join(f"{role}: {path}" for role, path in paths.items()))
        print(f"made in {time.perf_counter() - started:.0f} s")
    if args.report or args.report_only:
        report = evaluate_toy_models(args.directory)
        print(format_report(report))
        if args.out:
            _write_json(args.out, report)
    return 0


def _write_json(path: str, payload) -> None:
    from pipeline.bank import atomic_write_text
    atomic_write_text(Path(path), json.dumps(payload, indent=2) + "\n")


def _one_line(error: BaseException) -> str:
    """The message of an error, unwrapped from Ray's task error when it crossed an actor boundary."""
    cause = getattr(error, "cause", None)
    text = str(cause if cause is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__


COMMANDS = {"replay": run_replay, "sim-bank": run_sim_bank, "curves": run_curves, "run": run_pipeline,
            "collect": run_collect, "bench": run_bench, "make-tiny-models": run_make_tiny_models,
            "make-toy-models": run_make_toy_models}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]  # `slg` alone runs the embedded default
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except ValueError as error:  # domain errors and UsageError: the user's input was wrong
        print(f"slg: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        from pipeline.driver import ReplicaFailedError

        if not isinstance(error, ReplicaFailedError):
            raise
        print(f"slg: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
