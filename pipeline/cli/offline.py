"""The commands on worlds, banks and reward files, with no engines: ``slg replay`` (in this process
or as Ray tasks), ``slg sim-bank``, ``slg convert-bank``, ``slg curves``, ``slg predict``."""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from pipeline.cli.arguments import (
    UsageError,
    add_overrides,
    distinct_banks,
    distinct_names,
    distinct_positive_ints,
    fraction,
    int_at_least,
    int_list,
    name_list,
    non_empty,
    positive_int,
    seed,
    world_params,
    write_json,
)
from pipeline.search.methods import DEFAULT_METHODS

MAX_RESPONSE_TOKENS = 10**9  # beyond any model's response; token sums over episodes stay within int64
MAX_CEILING_SAMPLES = 100_000  # discoveries a prompt and budget; a bound on mistakes (1024 took an hour on nine banks)

def add_parsers(commands) -> None:
    _add_replay(commands)
    sim_bank = commands.add_parser("sim-bank", help="write a reward bank sampled from a simulated world")
    sim_bank.add_argument("--family", required=True, help="world family: " + ", ".join(_world_names()))
    sim_bank.add_argument("--param", action="append", metavar="KEY=VALUE")
    sim_bank.add_argument("--prompts", type=int, required=True)
    sim_bank.add_argument("--states", type=int, required=True)
    sim_bank.add_argument("--completions", type=int, required=True)
    sim_bank.add_argument("--seed", type=seed, default=0)
    sim_bank.add_argument("--out", required=True)
    sim_bank.set_defaults(handler=run_sim_bank)
    convert = commands.add_parser("convert-bank", help="a reward bank in the other format (JSONL <-> Parquet), losslessly")
    convert.add_argument("source", help="a bank: JSONL, a .parquet file or a folder of them (a path or a URL)")
    convert.add_argument("out", help="the copy: a path ending in .parquet is written as Parquet, anything else as JSONL")
    convert.set_defaults(handler=run_convert_bank)
    _add_curves(commands)
    predict = commands.add_parser("predict", help="how large an N is worth it: best-of-n predicted from samples")
    predict.add_argument("--rewards", required=True,
                         help='JSONL, a line per prompt or state: {"id": ..., "rewards": [...]}, or a reward bank; a path or a URL')
    predict.add_argument("--n", required=True, type=distinct_positive_ints, help="comma-separated n, e.g. 100,1000,10000")
    predict.add_argument("--upper-bound", type=float, help="the largest reward the scorer can give (nothing is predicted above)")
    predict.add_argument("--independent", action="store_true",
                         help="predict each id from its own rewards only (default: ids share the tie and tail statistics of the file)")
    predict.add_argument("--out", help="write JSONL here, a line per (id, n)")
    predict.add_argument("--plot", help="write the predicted curves with their 95%% bands (PNG) here")
    predict.set_defaults(handler=run_predict)


def _add_replay(commands) -> None:
    replay = commands.add_parser("replay", help="evaluate policies offline on a reward bank or a simulated world")
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument("--bank", type=distinct_banks,
                        help="reward banks (JSONL, a .parquet file or a folder of them, a path or a URL; docs/formats.md), "
                        "comma-separated")
    source.add_argument("--world", type=distinct_names,
                        help="simulated world families, comma-separated, or 'all': " + ", ".join(_world_names()))
    replay.add_argument("--param", action="append", metavar="KEY=VALUE", help="world parameter (repeatable)")
    replay.add_argument("--prompts", type=int, help="fresh prompts drawn from the world (required with --world)")
    replay.add_argument("--methods", type=name_list, default=DEFAULT_METHODS, help="comma-separated methods")
    replay.add_argument("--budgets", type=int_list, default=[100, 1000], help="comma-separated budgets N")
    replay.add_argument("--repeats", type=int, default=100, help="repetitions per prompt")
    replay.add_argument("--seed", type=seed, default=0)
    replay.add_argument("--workers", type=positive_int, default=None,
                        help="1: play in this process; N: as Ray tasks on a local instance of N CPUs, or on the cluster in "
                             "RAY_ADDRESS (default: Ray for a large replay or with RAY_ADDRESS, else this process)")
    replay.add_argument("--strict", action="store_true",
                        help="refuse budgets above a bank's smallest state pool: a policy could redraw that pool, which favours bon")
    replay.add_argument("--out", help="write the results as JSON here")
    replay.add_argument("--per-prompt", action="store_true",
                        help="banks, with --out: each prompt's mean best reward per method, best-of-N's exact value "
                             "and the two ceilings, per budget")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    replay.add_argument("--no-ceilings", action="store_true",
                        help="skip the two ceilings of an allocation that knew the distributions")
    replay.add_argument("--ceiling-samples", type=int_at_least(2), default=None,
                        help="Monte Carlo samples of the estimated ceilings: discoveries per bank prompt, fresh prompts "
                             "of a world (default 64; the interval narrows as one over its square root)")
    replay.add_argument("--discovery-fraction", type=fraction, default=None,
                        help="the share of N that the paid-discovery ceiling spends on prompt draws, each revealing "
                             "a state, before it shares the rest (default 0.25)")
    replay.add_argument("--equal-tokens", action="store_true",
                        help="each method plays the N at which it generates best-of-N's tokens at each budget "
                             "(found by pilot replays; the table shows the N played and the tokens spent)")
    replay.add_argument("--response-tokens", type=positive_int, default=400,
                        help="mean tokens of a whole response (the token model; worlds: geometric lengths as the "
                             "sim engine's, banks: this constant)")
    replay.add_argument("--state-tokens", type=positive_int, default=100, help="T of the token model (below --response-tokens)")
    add_overrides(replay, "search options, as in `slg run`: search.tail_fraction=0.3 search.adaptive.keep_fraction=0.5")
    replay.set_defaults(handler=run_replay)


def _add_curves(commands) -> None:
    curves = commands.add_parser("curves", help="predicted best-of-n (predictor, tail fit, plug-in) against exact values")
    target = curves.add_mutually_exclusive_group(required=True)
    target.add_argument("--bank", type=non_empty, help="a reward bank (a path or a URL): every state's pool is checked")
    target.add_argument("--real", nargs="?", const=_default_real_data(), metavar="DIR",
                        help="the real data sets (default folder: data/real), or one of them")
    target.add_argument("--world", type=non_empty, help="a simulated world family, or 'all' for every family")
    curves.add_argument("--param", action="append", metavar="KEY=VALUE", help="world parameter (repeatable)")
    curves.add_argument("--states", type=int, help="world states drawn (with --world; default 200)")
    curves.add_argument("--plot", help="write the error-vs-n plot (PNG) here")
    curves.add_argument("--m", type=distinct_positive_ints, help="samples the prediction sees (default 8,16,32; 16,32,64 with --world)")
    curves.add_argument("--n", type=_n_or_pool, help="n of the predicted best-of-n, or 'pool' for each pool's own size "
                                                      "(default: pool; 100,1000 with --world)")
    curves.add_argument("--repeats", type=int, default=20, help="samples of m drawn per pool or state")
    curves.add_argument("--seed", type=seed, default=0)
    curves.add_argument("--out", help="write the report as JSON here")
    curves.set_defaults(handler=run_curves)


def _world_names() -> list[str]:
    from pipeline.offline.worlds import WORLDS
    return sorted(WORLDS)


def _default_real_data() -> str:
    from pipeline.offline.real_data import REAL_DATA
    return str(REAL_DATA)


def _n_or_pool(text: str):
    return "pool" if text.strip() == "pool" else distinct_positive_ints(text)


def _worlds(families: list[str], params: list[str] | None) -> dict:
    """World targets by description; ``all`` is every family."""
    from pipeline.offline.worlds import WORLDS, make_world

    families = sorted(WORLDS) if families == ["all"] else families
    if len(families) > 1 and params:
        raise UsageError("--param applies to a single world family, not to several")
    worlds = [make_world(family, **world_params(params)) for family in families]
    return {world.describe(): world for world in worlds}


def run_replay(args) -> int:
    with contextlib.ExitStack() as inputs:  # banks downloaded from URLs live as long as the replay
        return _run_replay(args, inputs)


def _run_replay(args, inputs: contextlib.ExitStack) -> int:
    from pipeline.jobs.config import load_search_config
    from pipeline.offline.ceilings import format_ceilings
    from pipeline.offline.equal_cost import match_budgets
    from pipeline.offline.replay import format_table, replay_job, replay_rollouts, results_as_dicts
    from pipeline.offline.responses import TokenModel

    config = load_search_config(args.overrides)
    ceiling_settings = _ceiling_settings(args)
    if args.per_prompt and args.world:
        raise UsageError("--per-prompt writes a bank's prompts: a world's prompts are fresh draws")
    if args.per_prompt and not args.out:
        raise UsageError("--per-prompt writes a bank's prompts to --out: give --out FILE")
    if args.response_tokens > MAX_RESPONSE_TOKENS:
        raise UsageError(f"--response-tokens must be at most {MAX_RESPONSE_TOKENS}, got {args.response_tokens}")
    if args.state_tokens >= args.response_tokens:
        raise UsageError(f"--state-tokens ({args.state_tokens}) must be below --response-tokens ({args.response_tokens})")
    targets = _replay_targets(args, inputs)
    # worlds draw lengths as the sim engine does; banks record none: every response the mean
    tokens = TokenModel(state_tokens=args.state_tokens, mean_response_tokens=args.response_tokens,
                        random_lengths=bool(args.world))
    started = time.perf_counter()
    budget_maps = None
    if args.equal_tokens:
        if "bon" not in args.methods:
            raise UsageError("--equal-tokens matches every method to bon's tokens: list bon among --methods")
        if args.workers is not None and args.workers > 1:  # the pilot rounds and the replay share one Ray instance
            from pipeline.distributed.replay_executor import RayExecutor

            inputs.callback(RayExecutor(args.workers).close)
        budget_maps = match_budgets(targets, args.methods, args.budgets, args.repeats, args.prompts, args.seed, config,
                                    tokens, args.workers)
    total = replay_rollouts(targets, args.methods, args.budgets, args.repeats, args.prompts, budget_maps)
    with _progress_bar(total, enabled=not args.no_progress) as bar:
        report = replay_job(targets, args.methods, args.budgets, args.repeats, args.prompts, args.seed, config,
                            args.workers, progress=bar.update, strict=args.strict, with_ceilings=not args.no_ceilings,
                            tokens=tokens, budget_maps=budget_maps, per_prompt=args.per_prompt, **ceiling_settings)
    elapsed = time.perf_counter() - started
    rows, ceilings, prefix_signals = [], [], []
    for label, table in report.results.items():
        print(f"replay on {label}: {table[0].prompts} prompts x {args.repeats} repeats")
        print(format_table(table))
        rows += [{"world" if args.world else "bank": label, **row} for row in results_as_dicts(table)]
        if label in report.ceilings:
            print(format_ceilings(report.ceilings[label]))
            ceilings += [{"world" if args.world else "bank": label, **row} for row in report.ceilings[label]]
        prefix_signals += _report_prefix_signal(label, None if args.world else targets[label].prefix_signal, args.methods)
    print(f"{len(report.results)} target(s), {total:,} rollouts, {elapsed:.1f} s")
    if args.out:
        payload = {"results": rows, "ceilings": ceilings, "prefix_signals": prefix_signals, "seed": args.seed,
                   "repeats": args.repeats, **{key: None if args.no_ceilings else value for key, value in ceiling_settings.items()},
                   "elapsed_s": elapsed, "equal_tokens": args.equal_tokens,
                   "response_tokens": args.response_tokens, "state_tokens": args.state_tokens}
        payload.update({"source": next(iter(report.results))} if len(report.results) == 1 else {"sources": list(report.results)})
        if args.per_prompt:
            payload["prompts"] = [{"bank": label, **row} for label, rows in report.prompts.items() for row in rows]
        write_json(args.out, payload)
    return 0


def _ceiling_settings(args) -> dict:
    """``replay_job``'s ceiling settings from --ceiling-samples and --discovery-fraction, their
    defaults where not given; either beside --no-ceilings is refused."""
    from pipeline.offline.ceilings import CEILING_SAMPLES, DISCOVERY_FRACTION

    given = {"--ceiling-samples": args.ceiling_samples, "--discovery-fraction": args.discovery_fraction}
    for flag, value in given.items():
        if args.no_ceilings and value is not None:
            raise UsageError(f"{flag} {value} shapes the ceilings that --no-ceilings skips: give one of them")
    if (args.ceiling_samples or 0) > MAX_CEILING_SAMPLES:
        raise UsageError(f"--ceiling-samples must be at most {MAX_CEILING_SAMPLES}, got {args.ceiling_samples}")
    return {"ceiling_samples": args.ceiling_samples or CEILING_SAMPLES,
            "discovery_fraction": DISCOVERY_FRACTION if args.discovery_fraction is None else args.discovery_fraction}


def _replay_targets(args, inputs: contextlib.ExitStack) -> dict:
    """The worlds or banks of ``slg replay``, by label; a bank validated now and read a chunk at a
    time later (one at a URL is downloaded first, for as long as ``inputs`` lives)."""
    from pipeline.offline.bank_reader import StreamedBank
    from pipeline.outputs.destinations import fetched

    if args.world:
        if args.prompts is None:
            raise UsageError("--prompts is required with --world")
        return _worlds(args.world, args.param)
    if args.param:
        raise UsageError("--param applies to --world only")
    if args.prompts is not None:
        raise UsageError("--prompts applies to --world only (a bank replays all its prompts)")
    return {path: StreamedBank(inputs.enter_context(fetched(path, "bank")), label=path) for path in args.bank}


def _report_prefix_signal(label: str, signal, methods: list[str]) -> list[dict]:
    """A bank's prefix signal (``pipeline.stats.prefix_signal``) as a row of ``--out`` (none where it
    has none), and one warning line where its prefix scores clearly do not track its rewards and
    ``slg_share``, whose pick reads them, is replayed."""
    if signal is None:
        return []
    if "slg_share" in methods and signal.says_nothing:
        logging.getLogger("slg").warning("%s", signal.warning(f"bank {label}"))
    return [{"bank": label, **signal.as_dict()}]


def _progress_bar(total: int, enabled: bool):
    """A tqdm bar on stderr counting rollouts played; silent when disabled or stderr is not a terminal
    (tqdm still draws in a pipe unless ``disable=None`` sees no tty)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="rollout", unit_scale=True, file=sys.stderr, smoothing=0.05,
                disable=True if not enabled else None, desc="replay")


def run_sim_bank(args) -> int:
    from pipeline.offline.bank import JSONL_BYTES_PER_REWARD_AT_LEAST, simulated_rows, write_bank
    from pipeline.offline.worlds import make_world
    from pipeline.outputs.destinations import check_room

    world = make_world(args.family, **world_params(args.param))
    rows = simulated_rows(world, args.prompts, args.states, args.completions, args.seed)  # (checks the sizes)
    if not args.out.lower().endswith(".parquet"):  # a Parquet bank's size is its rewards' compression's
        rewards = args.prompts * args.states * args.completions
        check_room(args.out, rewards * JSONL_BYTES_PER_REWARD_AT_LEAST, "--out")
    write_bank(args.out, rows)
    print(f"wrote {args.prompts} prompts x {args.states} states x {args.completions} rollouts of {world.describe()} "
          f"to {args.out}", file=_beside(args.out))
    return 0


def _beside(out: str):
    """Where a command that writes a bank says what it wrote: stdout, or stderr where the bank itself
    went to stdout (``--out /dev/stdout | gzip``: the bank alone)."""
    from pipeline.outputs.destinations import STANDARD_OUTPUT

    return sys.stderr if out in STANDARD_OUTPUT else sys.stdout


def run_convert_bank(args) -> int:
    from pipeline.offline.bank import bank_rows, write_bank
    from pipeline.outputs.destinations import check_output_target, fetched

    check_output_target(args.out, "the output bank")
    written = 0

    def counted(rows):
        nonlocal written
        for row in rows:
            written += 1
            yield row

    # written as it is read: memory holds a few prompts, not the bank; a bad prompt midway leaves the
    # target as it was (write_bank writes whole)
    with fetched(args.source, "bank") as source:
        write_bank(args.out, counted(bank_rows(source)))
    print(f"wrote {written} prompts to {args.out}", file=_beside(args.out))
    return 0


def run_curves(args) -> int:
    from pipeline.offline.bank import read_bank
    from pipeline.offline.calibration import calibrate, check_fits_in_memory, format_report, world_states
    from pipeline.offline.plots import plot_report
    from pipeline.offline.real_data import real_pools
    from pipeline.outputs.destinations import fetched

    if args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    if args.param and (not args.world or args.world == "all"):
        raise UsageError("--param applies to a single --world family")
    if args.states is not None and not args.world:
        raise UsageError("--states applies to --world only (a bank's or a data set's states are its own)")
    states = 200 if args.states is None else args.states
    m_values = args.m or ([16, 32, 64] if args.world else [8, 16, 32])
    n_values = args.n or ([100, 1000] if args.world else "pool")
    num_n = 1 if n_values == "pool" else len(n_values)
    if args.real:
        pools = real_pools(args.real)
    elif args.world:
        if n_values == "pool":
            raise UsageError("--n pool needs finite pools (--real or --bank), not a world")
        if states < 1:
            raise UsageError(f"--states must be >= 1, got {states}")
        worlds = _worlds([args.world], args.param)
        check_fits_in_memory(states, args.repeats, m_values, num_n, world_states=states * len(worlds), pools=f"--states {states:,}")
        pools = {name: (world_states(world, states, args.seed), world.upper_bound) for name, world in worlds.items()}
    else:
        with fetched(args.bank, "bank") as bank:
            pools = {"bank": ([s for p in read_bank(bank) for s in p.state_rewards], None)}
    for name, (values, _) in pools.items():  # (the worlds' were checked before their states were drawn)
        check_fits_in_memory(len(values), args.repeats, m_values, num_n, pools=f"{name}: {len(values):,} pools")
    started = time.perf_counter()
    report = {name: calibrate(values, m_values, n_values, args.repeats, args.seed, upper_bound=bound)
              for name, (values, bound) in pools.items()}
    print(format_report(report))
    print(f"({time.perf_counter() - started:.1f} s; errors in units of each pool's sd; 'covered': the predictor's 95% interval)")
    if args.out:
        write_json(args.out, report)
    if args.plot:
        plot_report(report, args.plot)
    return 0


def run_predict(args) -> int:
    from pipeline.offline.bank import read_reward_lists
    from pipeline.offline.predictions import predict_file, predicted_curves
    from pipeline.outputs.destinations import fetched

    with fetched(args.rewards, "--rewards") as rewards:
        ids, rows = read_reward_lists(rewards)
    lines, result, table = predict_file(ids, rows, args.n, args.upper_bound, args.independent)
    _print_predictions(lines, len(args.n))
    if args.out:
        from pipeline.outputs.destinations import write_text
        from pipeline.outputs.files import json_text

        write_text(args.out, "".join(json_text(line) + "\n" for line in lines))
    if args.plot:
        from pipeline.offline.plots import plot_predictions

        shown = min(len(ids), 10)
        grid, curves = predicted_curves(table, result, args.n, args.upper_bound, shown)
        plot_predictions(args.plot, ids[:shown], grid, curves.value, curves.lower, curves.upper, marked_n=list(args.n))
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
