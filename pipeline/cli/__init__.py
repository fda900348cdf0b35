"""The ``slg`` command line: argument parsing, printing, error reporting; no algorithms.

Exit codes (SPEC.md): 0 success; 2 bad input or configuration (``ConfigError``), with a one-line
message naming the bad value and no traceback; 1 anything else, also in one line, with the
traceback in the log file the line names.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.search.policies import POLICIES

DEFAULT_METHODS = ["bon", "slg", "slg_adaptive", "oracle"]


class UsageError(ConfigError):
    """Bad command-line input (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage and exits 2; we want one line naming the value
        raise UsageError(message)


def _int_list(text: str) -> list[int]:
    """Distinct integers >= 1 (budgets, sample sizes, n, replica counts): a repeated one would count
    its results twice and narrow their intervals."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {min(values)} in {text!r}")
    return _distinct(values, text)


def _name_list(text: str) -> list[str]:
    return _distinct([x.strip() for x in text.split(",") if x.strip()], text)


def _distinct(values: list, text: str) -> list:
    repeated = [value for index, value in enumerate(values) if value in values[:index]]
    if repeated:
        raise argparse.ArgumentTypeError(f"{repeated[0]} is listed twice in {text!r}")
    return values


def _int_at_least(low: int):
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


_seed = _int_at_least(0)  # numpy's generators take seeds >= 0 only
_positive_int = _int_at_least(1)


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
    _add_pipeline_commands(commands)
    _add_offline_commands(commands)
    return parser


def _add_pipeline_commands(commands) -> None:
    """Commands that run engines through Ray: run, collect, bench, and the models they run."""
    run = commands.add_parser("run", help="run the pipeline (no arguments: the embedded default, simulated engines)")
    run.add_argument("--config", help="a YAML config (see configs/)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="OmegaConf dot-list overrides")

    collect = commands.add_parser("collect", help="write a reward bank from the configured engines (any backend)")
    collect.add_argument("--config", help="a YAML config (engines, data, seed), as for `slg run`")
    collect.add_argument("--states", type=int, help="states per prompt (S; collect.num_states, default 16)")
    collect.add_argument("--completions", type=int,
                         help="scored rollouts per state (M; collect.completions_per_state, default 64)")
    collect.add_argument("--out", help="the bank (JSONL, a path or a URL); default OUTPUT_DIR/bank.jsonl")
    collect.add_argument("--texts", help="also write state and response texts to this JSONL side file "
                                         "(one line per bank line, same shape)")
    collect.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="OmegaConf dot-list overrides")

    bench = commands.add_parser("bench", help="throughput: the pipeline, against a bare engine, across replicas")
    bench.add_argument("--config", help="a YAML config (engines), as for `slg run`")
    bench.add_argument("--prompts", type=int,
                       help="prompts (per replica with --replicas); the data's are cycled when it has fewer (default 16)")
    bench.add_argument("--budget", type=int, help="N (default 64)")
    bench.add_argument("--method", help="the method (default slg)")
    bench.add_argument("--raw", action="store_true", help="also run the same requests on one bare engine")
    bench.add_argument("--free-rm", action="store_true",
                       help="score at no cost (meaningless rewards): the generator path alone, without an RM competing for CPU")
    bench.add_argument("--replicas", type=_int_list, help="scaling: generator replica counts, e.g. 1,2,4,8")
    bench.add_argument("--out", help="write the measurements as JSON here")
    bench.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="OmegaConf dot-list overrides")

    tiny = commands.add_parser("make-tiny-models", help="write a tiny random-weight generator and RM for CPU tests")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=_seed, default=0)

    toy = commands.add_parser("make-toy-models", help="train the toy generator and reward model (CPU, minutes)")
    toy.add_argument("directory", help="writes DIRECTORY/generator and DIRECTORY/reward (new, empty, or its own earlier output)")
    toy.add_argument("--seed", type=_seed, default=0)
    toy.add_argument("--report", action="store_true", help="then measure the quality bands on held-out problems")
    toy.add_argument("--report-only", action="store_true", help="measure the toy models already in DIRECTORY; train nothing")
    toy.add_argument("--out", help="write the report as JSON here")


def _add_offline_commands(commands) -> None:
    """Commands on worlds, banks and reward files: no engines, no Ray."""
    replay = commands.add_parser("replay", help="evaluate policies offline on a reward bank or a simulated world")
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument("--bank", type=_name_list, help="reward banks (JSONL, SPEC.md format), comma-separated")
    source.add_argument("--world", type=_name_list,
                        help="simulated world families, comma-separated, or 'all': " + ", ".join(_world_names()))
    replay.add_argument("--param", action="append", metavar="KEY=VALUE", help="world parameter (repeatable)")
    replay.add_argument("--prompts", type=int, help="fresh prompts drawn from the world (required with --world)")
    replay.add_argument("--methods", type=_name_list, default=DEFAULT_METHODS, help="comma-separated methods")
    replay.add_argument("--budgets", type=_int_list, default=[100, 1000], help="comma-separated budgets N")
    replay.add_argument("--repeats", type=int, default=100, help="repetitions per prompt")
    replay.add_argument("--seed", type=_seed, default=0)
    replay.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: all cores)")
    replay.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                        help="search option, e.g. --set tail_fraction=0.3 --set adaptive.keep_fraction=0.5")
    replay.add_argument("--out", help="write the results as JSON here")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    sim_bank = commands.add_parser("sim-bank", help="write a reward bank sampled from a simulated world")
    sim_bank.add_argument("--family", required=True, help="world family: " + ", ".join(_world_names()))
    sim_bank.add_argument("--param", action="append", metavar="KEY=VALUE")
    sim_bank.add_argument("--prompts", type=int, required=True)
    sim_bank.add_argument("--states", type=int, required=True)
    sim_bank.add_argument("--completions", type=int, required=True)
    sim_bank.add_argument("--seed", type=_seed, default=0)
    sim_bank.add_argument("--out", required=True)

    curves = commands.add_parser("curves", help="predicted best-of-n (predictor, tail fit, plug-in) against exact values")
    target = curves.add_mutually_exclusive_group(required=True)
    target.add_argument("--bank", help="a reward bank: every state's pool is checked")
    target.add_argument("--real", nargs="?", const=_default_real_data(), metavar="DIR",
                        help="the real data sets (default folder: data/real), or one of them")
    target.add_argument("--world", help="a simulated world family, or 'all' for every family")
    curves.add_argument("--param", action="append", metavar="KEY=VALUE", help="world parameter (repeatable)")
    curves.add_argument("--states", type=int, default=200, help="world states drawn (with --world)")
    curves.add_argument("--plot", help="write the error-vs-n plot (PNG) here")
    curves.add_argument("--m", type=_int_list, help="samples the prediction sees (default 8,16,32; 16,32,64 with --world)")
    curves.add_argument("--n", type=_n_or_pool, help="n of the predicted best-of-n, or 'pool' for each pool's own size "
                                                      "(default: pool; 100,1000 with --world)")
    curves.add_argument("--repeats", type=int, default=20, help="samples of m drawn per pool or state")
    curves.add_argument("--seed", type=_seed, default=0)
    curves.add_argument("--out", help="write the report as JSON here")

    predict = commands.add_parser("predict", help="how large an N is worth it: best-of-n predicted from samples")
    predict.add_argument("--rewards", required=True,
                         help='JSONL, a line per prompt or state: {"id": ..., "rewards": [...]}, or a reward bank')
    predict.add_argument("--n", required=True, type=_int_list, help="comma-separated n, e.g. 100,1000,10000")
    predict.add_argument("--upper-bound", type=float, help="the largest reward the scorer can give (nothing is predicted above)")
    predict.add_argument("--independent", action="store_true",
                         help="predict each id from its own rewards only (default: ids share the tie and tail statistics of the file)")
    predict.add_argument("--out", help="write JSONL here, a line per (id, n)")
    predict.add_argument("--plot", help="write the predicted curves with their 95%% bands (PNG) here")


def _world_names() -> list[str]:
    from pipeline.offline.worlds import WORLDS
    return sorted(WORLDS)


def _search_config(overrides: list[str] | None):
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from pipeline.search.config import SearchConfig

    try:
        merged = OmegaConf.merge(OmegaConf.structured(SearchConfig), OmegaConf.from_dotlist(overrides or []))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise UsageError(f"bad search option: {str(error).splitlines()[0]}") from None


def run_replay(args) -> int:
    from pipeline.offline.bank import read_bank
    from pipeline.offline.replay import format_table, replay_many, replay_rollouts, results_as_dicts
    from pipeline.offline.worlds import WORLDS, make_world

    for method in args.methods:
        if method not in POLICIES:
            raise UsageError(f"unknown method {method!r}; expected one of {sorted(POLICIES)}")
    config = _search_config(args.overrides)
    if args.world:
        families = sorted(WORLDS) if args.world == ["all"] else args.world
        if len(families) > 1 and args.param:
            raise UsageError("--param applies to a single --world family, not to several")
        targets = {}
        for family in families:
            world = make_world(family, **_params(args.param))
            targets[world.describe()] = world
        if args.prompts is None:
            raise UsageError("--prompts is required with --world")
    else:
        if args.param:
            raise UsageError("--param applies to --world only")
        if args.prompts is not None:
            raise UsageError("--prompts applies to --world only (a bank replays all its prompts)")
        targets = {path: read_bank(path) for path in args.bank}
    total = replay_rollouts(targets, args.methods, args.budgets, args.repeats, args.prompts)
    started = time.perf_counter()
    with _progress_bar(total, enabled=not args.no_progress) as bar:
        results = replay_many(targets, args.methods, args.budgets, args.repeats, args.prompts, args.seed, config,
                              args.workers, progress=bar.update)
    elapsed = time.perf_counter() - started
    rows = []
    for label, table in results.items():
        print(f"replay on {label}: {table[0].prompts} prompts x {args.repeats} repeats")
        print(format_table(table))
        rows += [{"world" if args.world else "bank": label, **row} for row in results_as_dicts(table)]
    print(f"{len(results)} target(s), {total:,} rollouts, {elapsed:.1f} s")
    if args.out:
        payload = {"results": rows, "seed": args.seed, "repeats": args.repeats, "elapsed_s": elapsed}
        if len(results) == 1:
            payload["source"] = next(iter(results))
        else:
            payload["sources"] = list(results)
        _write_json(args.out, payload)
    return 0


def _progress_bar(total: int, enabled: bool):
    """A tqdm bar on stderr counting rollouts played; silent when disabled or stderr is not a terminal
    (tqdm still draws in a pipe unless ``disable=None`` sees no tty)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="rollout", unit_scale=True, file=sys.stderr, smoothing=0.05,
                disable=True if not enabled else None, desc="replay")


def run_sim_bank(args) -> int:
    from pipeline.offline.bank import simulate_bank, write_bank
    from pipeline.offline.worlds import make_world

    world = make_world(args.family, **_params(args.param))
    rows = simulate_bank(world, args.prompts, args.states, args.completions, args.seed)
    write_bank(args.out, rows)
    print(f"wrote {len(rows)} prompts x {args.states} states x {args.completions} rollouts of {world.describe()} "
          f"to {args.out}")
    return 0


def _default_real_data() -> str:
    from pathlib import Path
    return str(Path(__file__).resolve().parents[2] / "data" / "real")


def _n_or_pool(text: str):
    return "pool" if text.strip() == "pool" else _int_list(text)


def run_curves(args) -> int:
    from pipeline.offline.bank import read_bank
    from pipeline.offline.calibration import calibrate, format_report, plot_report, real_pools, world_states
    from pipeline.offline.worlds import WORLDS, make_world

    if args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    if args.param and (not args.world or args.world == "all"):
        raise UsageError("--param applies to a single --world family")
    m_values = args.m or ([16, 32, 64] if args.world else [8, 16, 32])
    n_values = args.n or ([100, 1000] if args.world else "pool")
    if args.real:
        pools = real_pools(args.real)
    elif args.world:
        if n_values == "pool":
            raise UsageError("--n pool needs finite pools (--real or --bank), not a world")
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
    started = time.perf_counter()
    report = {name: calibrate(values, m_values, n_values, args.repeats, args.seed, upper_bound=bound)
              for name, (values, bound) in pools.items()}
    print(format_report(report))
    print(f"({time.perf_counter() - started:.1f} s; errors in units of each pool's sd; 'covered': the predictor's 95% interval)")
    if args.out:
        _write_json(args.out, report)
    if args.plot:
        plot_report(report, args.plot)
    return 0


def run_predict(args) -> int:
    from pipeline.errors import ConfigError
    from pipeline.offline.bank import read_reward_lists
    from pipeline.stats.predict import predict_rows

    ids, rows = read_reward_lists(args.rewards)
    length = max(len(r) for r in rows)
    table = np.full((len(rows), length), np.nan)
    for i, values in enumerate(rows):
        table[i, : len(values)] = values
    if args.upper_bound is not None:
        if not np.isfinite(args.upper_bound):
            raise ConfigError(f"--upper-bound must be a finite number, got {args.upper_bound!r}")
        over = np.nanmax(table, axis=1) > args.upper_bound
        if over.any():
            i = int(np.argmax(over))
            raise ConfigError(f"--upper-bound {args.upper_bound:g} is below a reward of id {ids[i]!r} ({np.nanmax(table[i]):g})")
    groups = None if args.independent else np.zeros(len(rows), dtype=int)
    result = predict_rows(table, args.n, args.upper_bound, groups=groups)
    lines = []
    for i, name in enumerate(ids):
        flags = result.flag_names(i)
        for j, n in enumerate(args.n):
            lines.append({"id": name, "n": int(n), "predicted": float(result.value[i, j]), "lower": float(result.lower[i, j]),
                          "upper": float(result.upper[i, j]), "model": result.model(i, j), "flags": flags,
                          "weight": round(float(result.weight[i, j]), 4), "plug_in": float(result.plug_in[i, j]),
                          "tail_fit": float(result.tail_fit[i, j]), "samples": len(rows[i])})
    _print_predictions(lines, len(args.n))
    if args.out:
        from pipeline.outputs.destinations import write_text
        write_text(args.out, "".join(json.dumps(line) + "\n" for line in lines))
    if args.plot:
        from pipeline.offline.calibration import plot_predictions

        shown = min(len(ids), 10)
        grid = np.unique(np.concatenate([np.round(np.geomspace(1, max(args.n), 40)), args.n]).astype(int))
        # The curves use the file's pooled statistics, as the predictions above do.
        curve = predict_rows(table[:shown], grid, args.upper_bound, continuity=result.continuity[:shown],
                             heavy=result.flags[:shown])
        plot_predictions(args.plot, ids[:shown], grid, curve.value, curve.lower, curve.upper, marked_n=list(args.n))
    return 0


def _print_predictions(lines: list[dict], per_id: int, limit: int = 40) -> None:
    width = min(40, max([len(line["id"]) for line in lines] + [2]))
    print(f"{'id':<{width}} {'n':>7} {'predicted':>10} {'95% interval':>22}  {'model':<8} flags")
    for line in lines[: limit * per_id]:
        interval = f"[{line['lower']:.4g}, {line['upper']:.4g}]"
        print(f"{line['id'][:width]:<{width}} {line['n']:>7} {line['predicted']:>10.4g} {interval:>22}  {line['model']:<8} "
              f"{','.join(line['flags']) or '-'}")
    if len(lines) > limit * per_id:
        print(f"... {len(lines) // per_id - limit} more ids (all of them with --out)")


def _job_config(args, extra: list[str]):
    """The run config of a job command: schema, --config, the command's flags, then KEY=VALUE overrides."""
    from pipeline.jobs.config import load_run_config

    return load_run_config(args.config, extra + list(args.overrides))


def run_pipeline(args) -> int:
    from pipeline.jobs.report import format_summary
    from pipeline.jobs.searches import run

    print(format_summary(run(_job_config(args, []))), flush=True)
    return 0


def run_collect(args) -> int:
    from pipeline.jobs.collection import collect
    from pipeline.jobs.config import bank_path

    flags = {"collect.num_states": args.states, "collect.completions_per_state": args.completions,
             "collect.out": args.out, "collect.texts": args.texts}
    config = _job_config(args, [f"{key}={value}" for key, value in flags.items() if value is not None])
    written = collect(config)
    print(f"collected {written} prompts into {bank_path(config)}")
    return 0


def run_bench(args) -> int:
    from pipeline.jobs.benchmark import bench_pipeline, bench_raw_engine, bench_scaling, format_metrics, workload_prompts

    flags = {"bench.prompts": args.prompts, "bench.budget": args.budget, "bench.method": args.method,
             "bench.raw": args.raw or None, "bench.free_reward": args.free_rm or None,
             "bench.replicas": None if not args.replicas else "[" + ",".join(map(str, args.replicas)) + "]",
             "bench.out": args.out}
    config = _job_config(args, [f"{key}={value}" for key, value in flags.items() if value is not None])
    settings = config.bench
    report: dict = {"command": "slg bench " + " ".join(sys.argv[2:])}
    if settings.replicas:
        report["scaling"] = bench_scaling(config, settings.prompts, settings.method, settings.budget, settings.replicas)
        for row in report["scaling"]:
            print(f"{row['replicas']} replicas: {row['rollouts_per_s']:.1f} rollouts/s, "
                  f"scaling efficiency {row['scaling_efficiency']:.2f}")
    else:
        measured = bench_pipeline(config, workload_prompts(config.data, settings.prompts), settings.method,
                                  settings.budget, record_requests=settings.raw, free_reward=settings.free_reward)
        report["pipeline"] = measured["metrics"]
        print(format_metrics(measured["metrics"]))
        if settings.raw:
            report["raw"] = bench_raw_engine(config, measured["requests"])
            report["efficiency"] = measured["metrics"]["tokens_per_s"] / report["raw"]["tokens_per_s"]
            print(f"raw engine: {report['raw']['tokens_per_s']:.1f} tokens/s; pipeline efficiency "
                  f"{report['efficiency']:.3f}")
    if settings.out:
        _write_json(settings.out, report)
    return 0


def run_make_tiny_models(args) -> int:
    from pipeline.distributed.backends import load_backend

    paths = load_backend("model_maker", "tiny")(args.directory, seed=args.seed)
    print("\n".join(f"{role}: {path}" for role, path in paths.items()))
    return 0


def run_make_toy_models(args) -> int:
    from pipeline.distributed.backends import load_backend

    if args.report_only:
        for role in ("generator", "reward"):
            if not (Path(args.directory) / role / "config.json").is_file():
                raise UsageError(f"{args.directory!r} holds no toy {role} (no {role}/config.json); make them first")
    else:
        started = time.perf_counter()
        paths = load_backend("model_maker", "toy")(args.directory, seed=args.seed)
        print("\n".join(f"{role}: {path}" for role, path in paths.items()))
        print(f"made in {time.perf_counter() - started:.0f} s")
    if args.report or args.report_only:
        report, text = load_backend("model_report", "toy")(args.directory)
        print(text)
        if args.out:
            _write_json(args.out, report)
    return 0


def _check_output_paths(args) -> None:
    """Every file option a command writes, checked before its work starts (a folder or a file in
    the way would otherwise fail only at the end, after minutes of work)."""
    from pipeline.outputs.destinations import check_output_target

    for option in ("out", "texts"):
        if getattr(args, option, None):
            check_output_target(getattr(args, option), f"--{option}")
    if getattr(args, "plot", None):
        from pipeline.offline.calibration import check_plot_target
        check_plot_target(args.plot)


def _write_json(target: str, payload) -> None:
    """A JSON file at a path or a URL (``--out`` of every command)."""
    from pipeline.outputs.destinations import write_text

    write_text(target, json.dumps(payload, indent=2) + "\n")


def _one_line(error: BaseException) -> str:
    """The first line of an error's message, unwrapped from Ray's task error when it crossed an actor boundary."""
    cause = getattr(error, "cause", None)
    text = str(cause if cause is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unwrapped(error: BaseException) -> BaseException:
    cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError carries the actor's exception
    return cause if isinstance(cause, BaseException) else error


COMMANDS = {"replay": run_replay, "sim-bank": run_sim_bank, "curves": run_curves, "predict": run_predict, "run": run_pipeline,
            "collect": run_collect, "bench": run_bench, "make-tiny-models": run_make_tiny_models,
            "make-toy-models": run_make_toy_models}


def main(argv: list[str] | None = None) -> int:
    from pipeline.logs import configure_logging, record_traceback

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]  # `slg` alone runs the embedded default
    configure_logging()
    try:
        args = build_parser().parse_args(argv)
        _check_output_paths(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("slg: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if isinstance(_unwrapped(error), ConfigError):  # the user's input was wrong: say which, nothing more
            print(f"slg: error: {_one_line(error)}", file=sys.stderr)
            return 2
        where = record_traceback(error)
        print(f"slg: error: {type(_unwrapped(error)).__name__}: {_one_line(error)} (traceback in {where})",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
