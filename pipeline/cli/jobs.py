"""The commands that run engines through Ray: ``slg run``, ``slg collect``, ``slg bench``.

Each loads the run config (schema, ``--config``, the command's own flags, then ``KEY=VALUE``
overrides) and hands it to its job in ``pipeline.jobs``.
"""

from __future__ import annotations

import sys

from pipeline.cli.arguments import add_overrides, distinct_positive_ints, write_json


def add_parsers(commands) -> None:
    run = commands.add_parser("run", help="run the pipeline (no arguments: the embedded default, simulated engines)")
    run.add_argument("--config", help="a YAML config (see configs/)")
    add_overrides(run)
    run.set_defaults(handler=run_searches)

    collect = commands.add_parser("collect", help="write a reward bank from the configured engines (any backend)")
    collect.add_argument("--config", help="a YAML config (engines, data, seed), as for `slg run`")
    collect.add_argument("--states", type=int, help="states per prompt (S; collect.num_states, default 16)")
    collect.add_argument("--completions", type=int,
                         help="scored rollouts per state (M; collect.completions_per_state, default 64)")
    collect.add_argument("--out", dest="bank",
                         help="the bank: a folder (or URL) of Parquet shards, or a path ending in .jsonl; default OUTPUT_DIR/bank")
    collect.add_argument("--responses", action="store_true",
                         help="Parquet banks: also write each rollout's response text (a responses column)")
    collect.add_argument("--texts", help="JSONL banks: also write state and response texts to this side file "
                                         "(one line per bank line, same shape)")
    add_overrides(collect)
    collect.set_defaults(handler=run_collect)

    bench = commands.add_parser("bench", help="throughput: the pipeline, against a bare engine, across replicas")
    bench.add_argument("--config", help="a YAML config (engines), as for `slg run`")
    bench.add_argument("--prompts", type=int,
                       help="prompts (per replica with --replicas); the data's are cycled when it has fewer (default 16)")
    bench.add_argument("--budget", type=int, help="N (default 64)")
    bench.add_argument("--method", help="the method (default slg)")
    bench.add_argument("--raw", action="store_true", help="also run the same requests on one bare engine")
    bench.add_argument("--free-rm", action="store_true",
                       help="score at no cost (meaningless rewards): the generator path alone, without an RM competing for CPU")
    bench.add_argument("--replicas", type=distinct_positive_ints, help="scaling: generator replica counts, e.g. 1,2,4,8")
    bench.add_argument("--repeats", type=int,
                       help="run the pipeline workload this many times on the same replicas, each with its own seed, "
                            "and report each figure's median and range (default 1)")
    bench.add_argument("--out", help="write the measurements as JSON here")
    add_overrides(bench)
    bench.set_defaults(handler=run_bench)


def job_config(args, settings: dict | None = None):
    """The run config of a job command; ``settings`` maps config keys to the command's flags (unset ones left out)."""
    from pipeline.jobs.config import load_run_config

    given = {key: value for key, value in (settings or {}).items() if value is not None}
    return load_run_config(args.config, list(args.overrides), given)


def run_searches(args) -> int:
    from pipeline.jobs.report import format_summary
    from pipeline.jobs.searches import run

    print(format_summary(run(job_config(args))), flush=True)
    return 0


def run_collect(args) -> int:
    from pipeline.jobs.collection import collect
    from pipeline.jobs.config import bank_path

    config = job_config(args, {"collect.num_states": args.states, "collect.completions_per_state": args.completions,
                               "collect.out": args.bank, "collect.texts": args.texts,
                               "collect.responses": args.responses or None})
    written = collect(config)
    print(f"collected {written} prompts into {bank_path(config)}")
    return 0


def run_bench(args) -> int:
    from pipeline.jobs.benchmark import (
        bench_pipeline,
        bench_raw_engine,
        bench_scaling,
        format_metrics,
        format_runs,
        runs_summary,
        workload_prompts,
    )

    config = job_config(args, {"bench.prompts": args.prompts, "bench.budget": args.budget, "bench.method": args.method,
                               "bench.raw": args.raw or None, "bench.free_reward": args.free_rm or None,
                               "bench.replicas": args.replicas, "bench.repeats": args.repeats, "bench.out": args.out})
    settings = config.bench
    report: dict = {"command": "slg bench " + " ".join(sys.argv[2:])}
    if settings.replicas:
        report["scaling"] = bench_scaling(config, settings.prompts, settings.method, settings.budget, settings.replicas)
        for row in report["scaling"]:
            print(f"{row['replicas']} replicas: {row['rollouts_per_s']:.1f} rollouts/s, "
                  f"scaling efficiency {row['scaling_efficiency']:.2f}")
    else:
        measured = bench_pipeline(config, workload_prompts(config.data, settings.prompts), settings.method,
                                  settings.budget, record_requests=settings.raw, free_reward=settings.free_reward,
                                  repeats=settings.repeats)
        report["pipeline"] = measured["metrics"]
        print(("" if settings.repeats == 1 else f"run 1 of {settings.repeats}:\n") + format_metrics(measured["metrics"]))
        if settings.repeats > 1:
            report["runs"], report["summary"] = measured["runs"], runs_summary(measured["runs"])
            print(format_runs(report["summary"], settings.repeats))
        if settings.raw:
            report["raw"] = bench_raw_engine(config, measured["requests"])
            report["efficiency"] = measured["metrics"]["tokens_per_s"] / report["raw"]["tokens_per_s"]
            print(f"raw engine: {report['raw']['tokens_per_s']:.1f} tokens/s; pipeline efficiency "
                  f"{report['efficiency']:.3f}")
    if settings.out:
        write_json(settings.out, report)
    return 0
