"""``slg bench``: throughput of the whole pipeline, its efficiency against a bare engine, and its
scaling with replicas. A benchmark measures; nothing here asserts a speed.

- Pipeline: P prompts x one budget x one method through Ray actors and the driver, after every
  engine is up (engine start is not counted). Reports rollouts/s (responses started), RM items/s
  (every text the reward model scores: a chunk of a response that grows, ``spec_rejection``, is
  scored once per chunk, and a state's prefix alone, ``slg_share``, rides in its root rollout's item),
  generated tokens/s, RM tokens/s, each replica's busy fraction (time with a call in flight), the
  cached share of prompt tokens (all rollouts, and state rollouts alone), and the driver's own CPU
  time per rollout and per RM item. On the sim backend also the method's compute multipliers
  against the world's exact best-of-N, in rollouts and in generated tokens.
- Raw ceiling (``--raw``): the very rollout requests the driver sent (same prompts, states, seeds,
  lengths), in one ``generate`` call on one in-process engine: no Ray, no driver, no reward model.
  Efficiency = pipeline tokens/s over raw tokens/s.
- ``--free-rm``: the reward replicas score at no cost (meaningless rewards), so the pipeline's own
  overhead around the generator shows without a reward model competing for the same CPU.
- Scaling (``--replicas 1,2,4,8``): k generator replicas on k logical GPUs, each with the same load
  (P prompts per replica, so k P prompts: weak scaling, as a serving system grows with its
  traffic); scaling efficiency = throughput(k) / (k x throughput(1)). Meaningful with
  ``generator.sim.latency_per_token_s`` > 0, which makes a sim replica as slow as a GPU engine.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import replace

from pipeline.distributed.driver import SearchObserver
from pipeline.offline.multipliers import format_multiplier

log = logging.getLogger("slg")


def workload_prompts(data, count: int) -> list:
    """Exactly ``count`` prompts: the data's first ones, cycled when it has fewer (copy k of a prompt
    gets the id ``ID#k``, hence its own seeds: a distinct search, as another sample of the problem)."""
    from pipeline.jobs.prompts import load_prompts

    base = load_prompts(replace(data, num_prompts=count))
    return [p if i < len(base) else replace(p, prompt_id=f"{p.prompt_id}#{i // len(base)}")
            for i, p in ((i, base[i % len(base)]) for i in range(count))]


class RequestLog(SearchObserver):
    """Every rollout request in the order it was first queued: the token workload ``--raw``
    replays on a bare engine."""

    def __init__(self):
        self.requests: list = []

    def rollout_requested(self, search, request) -> None:
        self.requests.append(request)

    def report(self) -> list:
        return self.requests


def bench_pipeline(config, prompts, method: str, budget: int, record_requests: bool = False,
                   free_reward: bool = False, repeats: int = 1) -> dict:
    """``free_reward``: score with the ``free`` reward backend (no CPU or GPU cost) to measure the
    generator path alone. ``repeats``: the workload that many times on the same replicas, started
    once, each run with a driver of its own and the seed ``config.seed + k`` (fresh rollouts, so no
    run is served from another's prefix cache). ``metrics`` and ``requests`` are the first run's;
    ``runs`` holds every run's metrics."""
    from pipeline.distributed.session import Session
    from pipeline.jobs.searches import search_grid

    searches = search_grid(prompts, [method], [budget], config.search)
    with Session(config, reward_backend="free" if free_reward else None) as session:
        session.place_replicas()
        session.wait_until_engines_are_up()
        runs, requests = [], None
        for k in range(repeats):
            wall, progress, busy, rows, recorded = _one_run(session, config, searches, config.seed + k,
                                                            record_requests and k == 0)
            runs.append(run_metrics(config, len(prompts), method, budget, free_reward, wall, progress, busy, rows))
            if k == 0:
                requests = recorded
    return {"metrics": runs[0], "runs": runs, "requests": requests}


def _one_run(session, config, searches, seed: int, record_requests: bool) -> tuple:
    """(wall s, final progress, busy fractions, result rows, recorded requests) of one driver's run."""
    import ray

    driver = session.start_driver(searches, RequestLog() if record_requests else None, seed=seed)
    started, rows = time.perf_counter(), []
    while True:
        finished, progress = ray.get(driver.step.remote(config.driver.step_s))
        rows += finished
        if progress["done"]:
            break
    wall = time.perf_counter() - started
    progress, busy, requests = ray.get([driver.progress.remote(), driver.busy_fractions.remote(),
                                        driver.observer_report.remote()])
    ray.kill(driver)  # its process: the next run's driver is a fresh one
    return wall, progress, busy, rows, requests


def run_metrics(config, prompts: int, method: str, budget: int, free_reward: bool, wall: float, progress: dict,
                busy: dict, rows: list[dict]) -> dict:
    """One run's measurements from its driver's final progress (``Driver.progress``)."""
    items = progress["rollouts_scored"] + progress["prefixes_scored"]  # every text the reward model scored
    scored, started_rollouts = max(items, 1), max(progress["rollouts_generated"], 1)
    metrics = {
        "prompts": prompts, "method": method, "budget": budget, "wall_s": wall, "free_reward": free_reward,
        "generator_replicas": config.generator.num_replicas, "reward_replicas": config.reward.num_replicas,
        "rollouts_per_s": progress["rollouts_generated"] / wall,  # responses started
        "rm_items_per_s": items / wall,  # every text scored: chunks of growing responses and prefixes alone included
        "tokens_per_s": progress["tokens_generated"] / wall,
        "rm_tokens_per_s": progress["rm_tokens"] / wall,
        "generator_busy": busy["generate"], "reward_busy": busy["score"],
        "cached_prompt_share": progress["cached_prompt_tokens"] / max(progress["prompt_tokens"], 1),
        "state_cached_share": (progress["state_cached_tokens"] / progress["state_prompt_tokens"]
                               if progress["state_prompt_tokens"] else None),
        "driver_us_per_rollout": 1e6 * progress["driver_cpu_s"] / started_rollouts,  # CPU: what one driver needs
        "driver_us_per_rm_item": 1e6 * progress["driver_cpu_s"] / scored,
        # its parts: the policies' own rounds, the replica calls (packing, sending, waiting, unpacking), the rest
        "driver_policy_us_per_rollout": 1e6 * progress["driver_policy_cpu_s"] / started_rollouts,
        "driver_calls_us_per_rollout": 1e6 * progress["driver_calls_cpu_s"] / started_rollouts,
        "driver_bookkeeping_us_per_rollout": 1e6 * (progress["driver_cpu_s"] - progress["driver_policy_cpu_s"]
                                                    - progress["driver_calls_cpu_s"]) / started_rollouts,
        "driver_wall_us_per_rollout": 1e6 * progress["driver_busy_s"] / started_rollouts,  # wall: engines beside it
        "rollouts": progress["rollouts_generated"], "rm_items": items,
        "rm_tokens": progress["rm_tokens"], "tokens_generated": progress["tokens_generated"],
        "prompt_tokens": progress["prompt_tokens"], "cached_prompt_tokens": progress["cached_prompt_tokens"],
        "state_prompt_tokens": progress["state_prompt_tokens"], "state_cached_tokens": progress["state_cached_tokens"],
    }
    metrics.update(sim_multipliers(config, rows, budget))
    return metrics


def runs_summary(runs: list[dict]) -> dict:
    """The median and range over runs of the throughput and of the driver's time per rollout and
    its parts (``bench_pipeline``'s ``runs``): on a shared machine a single run's figures move from
    one minute to the next."""
    keys = ("rollouts_per_s", "tokens_per_s", "driver_us_per_rollout", "driver_policy_us_per_rollout",
            "driver_calls_us_per_rollout", "driver_bookkeeping_us_per_rollout")
    return {key: {"median": statistics.median(run[key] for run in runs), "min": min(run[key] for run in runs),
                  "max": max(run[key] for run in runs)} for key in keys}


def sim_multipliers(config, rows: list[dict], budget: int) -> dict:
    """The searches' mean best reward and, on the sim backend, its compute multipliers against the
    world's exact best-of-N: BoN's rollouts (generated tokens, n x the sim's mean response length)
    to reach it over the method's own per search."""
    from pipeline.distributed.config import Backend
    from pipeline.offline.multipliers import compute_multiplier, per_cost
    from pipeline.offline.worlds import make_world

    rewards = [r["best_reward"] for r in rows if r["best_reward"] is not None]
    out = {"mean_best_reward": sum(rewards) / len(rewards) if rewards else None,
           "compute_multiplier": None, "token_multiplier": None}
    if config.generator.backend != Backend.sim or not rewards:
        return out
    sim, state_tokens = config.generator.sim, config.generator.state_tokens
    mean_length = (1 - sim.short_rollout_fraction) * sim.mean_response_tokens + sim.short_rollout_fraction * state_tokens / 2
    found = compute_multiplier(make_world(sim.family, **sim.params).prompt_value, out["mean_best_reward"], budget)
    rollouts = sum(r["rollouts"] for r in rows) / len(rows)
    tokens = sum(r["tokens_generated"] for r in rows) / len(rows)
    return {**out, "compute_multiplier": per_cost(found, budget, rollouts),
            "token_multiplier": per_cost(found, budget, tokens / mean_length)}


def bench_raw_engine(config, requests, repeats: int = 2) -> dict:
    """The recorded requests in one call on one in-process engine (started before the clock); the
    best of ``repeats`` runs (a ceiling: on a shared machine single runs vary by 20%)."""
    from pipeline.distributed.backends import load_backend
    from pipeline.distributed.calls import in_process
    from pipeline.distributed.contract import PromptInput, RolloutRequest
    from pipeline.distributed.session import generator_kwargs

    quiet_vllm_logs()
    engine = in_process(load_backend("generator", config.generator.backend.value)(**generator_kwargs(config)))
    try:
        engine.generate([RolloutRequest(-1, PromptInput("warm-up", "warm up the engine"), None, 12345)])
        walls = []
        for _ in range(repeats):
            if hasattr(engine, "reset_prefix_cache"):  # each run starts cold, as the pipeline did
                engine.reset_prefix_cache()
            started = time.perf_counter()
            rollouts = engine.generate(list(requests))
            walls.append(time.perf_counter() - started)
    finally:
        if hasattr(engine, "close"):
            engine.close()
    tokens, wall = sum(r.num_generated_tokens for r in rollouts), min(walls)
    return {"rollouts": len(rollouts), "tokens_generated": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "wall_s_each": walls}


def quiet_vllm_logs() -> None:
    """Only errors from vLLM in this process and the engine processes it starts, unless
    VLLM_LOGGING_LEVEL says otherwise. The raw engine runs here, where vLLM would log every step
    of its start and shutdown to stdout, between the benchmark's results; the pipeline's replicas
    log the same to Ray's session logs, not to the terminal."""
    level = os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # read by vLLM at import, here and in its engine processes
    logging.getLogger("vllm").setLevel(level.upper())  # where vLLM was imported already


def bench_scaling(config, prompts_per_replica: int, method: str, budget: int, replica_counts: list[int]) -> list[dict]:
    """Throughput with k generator replicas, each on one logical GPU of a local instance and each
    with ``prompts_per_replica`` prompts of load."""
    rows, base = [], None
    for count in replica_counts:
        scaled = replace(config, generator=replace(config.generator, num_replicas=count, num_gpus_per_replica=1.0),
                         ray=replace(config.ray, num_gpus=max(replica_counts)),
                         data=replace(config.data, num_prompts=prompts_per_replica * count))
        prompts = workload_prompts(scaled.data, prompts_per_replica * count)
        metrics = bench_pipeline(scaled, prompts, method, budget)["metrics"]
        base = base or metrics["rollouts_per_s"]
        rows.append({"replicas": count, "prompts": len(prompts), "rollouts_per_s": metrics["rollouts_per_s"],
                     "tokens_per_s": metrics["tokens_per_s"],
                     "scaling_efficiency": metrics["rollouts_per_s"] / (count * base),
                     "driver_us_per_rollout": metrics["driver_us_per_rollout"],
                     "generator_busy_mean": sum(metrics["generator_busy"]) / count})
        log.info("%d replicas: %.0f rollouts/s, scaling efficiency %.2f", count, rows[-1]["rollouts_per_s"],
                 rows[-1]["scaling_efficiency"])
    return rows


def format_metrics(metrics: dict) -> str:
    busy = ", ".join(f"{b:.2f}" for b in metrics["generator_busy"])
    rm_busy = ", ".join(f"{b:.2f}" for b in metrics["reward_busy"])
    state_share = "-" if metrics["state_cached_share"] is None else f"{metrics['state_cached_share']:.3f}"
    lines = [
        f"workload: {metrics['prompts']} prompts x N={metrics['budget']} x {metrics['method']}, {metrics['wall_s']:.2f} s",
        f"rollouts/s {metrics['rollouts_per_s']:.1f}   RM items/s {metrics['rm_items_per_s']:.1f} "
        f"({metrics['rm_items'] / max(metrics['rollouts'], 1):.2f} per rollout)   generated tokens/s {metrics['tokens_per_s']:.1f}",
        f"RM tokens/s {metrics['rm_tokens_per_s']:.1f}",
        f"generator busy [{busy}]   reward busy [{rm_busy}]",
        f"cached share of prompt tokens {metrics['cached_prompt_share']:.3f} (state rollouts: {state_share})",
        f"driver time per rollout {metrics['driver_us_per_rollout']:.1f} us CPU, per RM item "
        f"{metrics['driver_us_per_rm_item']:.1f} us ({metrics['driver_wall_us_per_rollout']:.1f} us wall per rollout, "
        "engines sharing its cores)",
        f"  of which per rollout: policy {metrics['driver_policy_us_per_rollout']:.1f} us, replica calls "
        f"{metrics['driver_calls_us_per_rollout']:.1f} us, bookkeeping {metrics['driver_bookkeeping_us_per_rollout']:.1f} us",
    ]
    if metrics.get("token_multiplier") is not None:
        lines.append(f"mean best reward {metrics['mean_best_reward']:.4f}; compute multiplier vs exact best-of-N: "
                     f"{format_multiplier(metrics['compute_multiplier'])} in rollouts, "
                     f"{format_multiplier(metrics['token_multiplier'])} in tokens")
    return "\n".join(lines)


def format_runs(summary: dict, count: int) -> str:
    """``runs_summary``'s lines: each figure's median over the runs, and its range."""
    def cell(key):
        figure = summary[key]
        return f"{figure['median']:.1f} ({figure['min']:.1f}-{figure['max']:.1f})"

    return (f"over {count} runs, median (range): rollouts/s {cell('rollouts_per_s')}, generated tokens/s "
            f"{cell('tokens_per_s')}\n"
            f"driver time per rollout {cell('driver_us_per_rollout')} us CPU: policy "
            f"{cell('driver_policy_us_per_rollout')}, replica calls {cell('driver_calls_us_per_rollout')}, "
            f"bookkeeping {cell('driver_bookkeeping_us_per_rollout')}")
