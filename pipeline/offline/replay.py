"""Offline evaluation of the policies on a simulated world or a reward bank: the experiment engine.

No models: episodes are played by the in-process sources of ``pipeline.offline.episodes`` in large
batches, as a stream of tasks (``pipeline.offline.replay_tasks``) run here (``workers=1``) or as Ray
tasks on a local instance or a cluster (``pipeline.distributed.replay_executor``), with the same
numbers either way. A bank is read a chunk of prompts at a time (``pipeline.offline.bank_reader``),
never whole. For every (method, budget) it reports the mean best reward with its 95% interval, the
compute multiplier against exact BoN in rollouts and in generated tokens (``pipeline.offline.multipliers``;
tokens from the sources' token model, ``pipeline.offline.responses``), the regret against the oracle,
the paired difference from ``bon`` where it ran, where rollouts carry ``correct`` the accuracy of the
answer (docs/formats.md, ``slg replay``), and on a bank whether an episode drew more rollouts from a
state than its pool holds (``pool_exceeded``): it then redrew rewards it already had, which caps what
a state can give and so favours BoN.

A method may play another N than the budget it is reported at (``budget_maps``: at equal generated
tokens, ``pipeline.offline.equal_cost``): its episodes then draw from the streams of that budget.

Episodes of different methods at the same budget use the same random streams (common random
numbers), so ``slg`` and ``oracle`` see identical root rollouts and state rewards, and differences
between methods are measured with less noise than their intervals suggest.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.errors import ConfigError
from pipeline.offline.bank_reader import BankChunks, StreamedBank, as_bank
from pipeline.offline.ceilings import CEILING_SAMPLES, DISCOVERY_FRACTION, target_ceiling_rows
from pipeline.offline.episodes import BankPrompt
from pipeline.offline.multipliers import (
    Cell,
    CurveAt,
    compute_multiplier,
    curve_of,
    find_multipliers,
    format_multiplier,
    format_multiplier_range,
    interval_digits,
    per_cost,
)
from pipeline.offline.per_prompt import in_order, joined, prompt_rows
from pipeline.offline.replay_tasks import LocalExecutor, Play, Task, bon_values, ceilings, play
from pipeline.offline.responses import TokenModel
from pipeline.offline.worlds import World
from pipeline.search.config import PredictionBudget, SearchConfig, check_bound_covers, validate_search_config
from pipeline.search.methods import check_budgets, check_methods, policy_class

__all__ = ["MethodResult", "ReplayReport", "compute_multiplier", "format_table", "replay", "replay_job", "replay_many",
           "replay_rollouts", "results_as_dicts"]

EPISODE_ROLLOUTS_PER_TASK = 1_000_000  # episodes x budget per task: bounds a worker's memory
RAY_FROM_ROLLOUTS = 200_000_000        # workers=None: a replay this large runs on Ray (smaller ones finish before it starts)
POOL_NOTE = ("redrawn: some episode drew more rollouts from a state than its pool holds, so it redrew rewards it "
             "already had; a finite pool caps what a state can give, which favours bon (--strict refuses such budgets)")

Target = World | list[BankPrompt] | BankChunks


@dataclass
class MethodResult:
    method: str
    budget: int                        # the budget reported at (with a budget map, the N it plays may differ)
    mean_best_reward: float
    ci95: float
    compute_multiplier: float | str | None  # BoN's rollouts to reach the mean best reward / the method's rollouts
    regret_vs_oracle: float | None
    accuracy: float | None
    rollouts_mean: float
    prompts: int
    repeats: int
    played_budget: int = 0             # the N the method played
    tokens_mean: float = 0.0           # generated tokens per episode
    rm_tokens_mean: float = 0.0        # tokens the reward model read per episode
    rm_items_mean: float = 0.0         # reward-model calls per episode (partial responses and prefixes included)
    token_multiplier: float | str | None = None  # BoN's generated tokens to reach the mean best reward / the method's
    vs_bon: float | None = None        # mean over episodes of (method - bon) in best reward, same budget
    vs_bon_ci95: float | None = None
    pool_exceeded: bool | None = None  # a bank: did some episode draw more from a state than its pool holds
    compute_multiplier_range: list | None = None  # [low, high]: the multipliers of mean best reward -+ ci95


@dataclass
class ReplayReport:
    """Results per target; played ``with_ceilings``, the ceiling rows (``pipeline.offline.ceilings``);
    ``per_prompt``, a bank's rows per prompt (``pipeline.offline.per_prompt``)."""

    results: dict[str, list[MethodResult]]
    ceilings: dict[str, list[dict]] = field(default_factory=dict)
    prompts: dict[str, list[dict]] = field(default_factory=dict)


def replay(target: Target, methods: list[str], budgets: list[int], repeats: int, num_prompts: int | None = None,
           seed: int = 0, config: SearchConfig | None = None, workers: int | None = None,
           progress: Callable[[int], None] | None = None, strict: bool = False, tokens: TokenModel | None = None,
           budget_map: dict | None = None) -> list[MethodResult]:
    """Evaluate ``methods`` at each budget on a world (``num_prompts`` fresh prompts) or a bank."""
    return replay_many({"": target}, methods, budgets, repeats, num_prompts, seed, config, workers, progress, strict,
                       tokens, {"": budget_map} if budget_map else None)[""]


def replay_many(targets: dict[str, Target], methods: list[str], budgets: list[int], repeats: int,
                num_prompts: int | None = None, seed: int = 0, config: SearchConfig | None = None,
                workers: int | None = None, progress: Callable[[int], None] | None = None,
                strict: bool = False, tokens: TokenModel | None = None,
                budget_maps: dict | None = None) -> dict[str, list[MethodResult]]:
    """``replay`` of several worlds or banks as one job. Results per target, keyed like ``targets``."""
    return replay_job(targets, methods, budgets, repeats, num_prompts, seed, config, workers, progress, strict,
                      tokens=tokens, budget_maps=budget_maps).results


def replay_job(targets: dict[str, Target], methods: list[str], budgets: list[int], repeats: int,
               num_prompts: int | None = None, seed: int = 0, config: SearchConfig | None = None,
               workers: int | None = None, progress: Callable[[int], None] | None = None, strict: bool = False,
               with_ceilings: bool = False, tokens: TokenModel | None = None,
               budget_maps: dict | None = None, ceiling_samples: int = CEILING_SAMPLES,
               discovery_fraction: float = DISCOVERY_FRACTION, per_prompt: bool = False) -> ReplayReport:
    """Every target's results (and ceilings) as one stream of tasks.

    ``workers``: 1 plays here; more, on a local Ray instance with that many CPUs (or the cluster in
    $RAY_ADDRESS); None, on Ray when the replay is large (``RAY_FROM_ROLLOUTS``) or $RAY_ADDRESS is
    set, else here. ``progress``, if given, is called with the rollouts of each finished task (their
    total is :func:`replay_rollouts`). ``strict`` refuses (``ConfigError``) a budget that could draw
    more rollouts from one state than its pool holds. ``budget_maps[label][(method, budget)]``: the N
    that method plays for that budget on that target (default: the budget). ``tokens``: the token
    model of the sources (default ``TokenModel()``; a bank's lengths are its constant mean).
    ``ceiling_samples``: the Monte Carlo size of the estimated ceilings (discoveries per bank prompt,
    fresh prompts of a world; ``pipeline.offline.ceilings``); ``discovery_fraction``: the share of N
    that paid discovery spends on prompt draws before it shares the rest. ``per_prompt``: also each
    bank prompt's results and ceilings (``ReplayReport.prompts``; refused on a world, whose ceilings
    draw prompts of their own).
    """
    config = config or SearchConfig()
    tokens = tokens or TokenModel()
    targets = {label: t if isinstance(t, World) else as_bank(t, label) for label, t in targets.items()}
    maps = {label: {(m, b): (budget_maps or {}).get(label, {}).get((m, b), b) for m in methods for b in budgets}
            for label in targets}
    for label, target in targets.items():
        _check_request(target, label, methods, budgets, repeats, num_prompts, config, strict, maps[label])
    validate_search_config(config, sorted(set(budgets) | {n for m in maps.values() for n in m.values()}))
    if with_ceilings and ceiling_samples < 2:  # one sample has no Monte Carlo error to report
        raise ConfigError(f"ceiling samples must be at least 2, got {ceiling_samples}")
    if with_ceilings and not 0.0 < discovery_fraction <= 1.0:
        raise ConfigError(f"the discovery fraction must be in (0, 1], got {discovery_fraction}")
    settings = (ceiling_samples, discovery_fraction) if with_ceilings else None
    if per_prompt and any(isinstance(target, World) for target in targets.values()):
        raise ConfigError("per-prompt results are a bank's: a world's prompts are fresh draws, its ceilings' others")
    executor = _executor(workers, replay_rollouts(targets, methods, budgets, repeats, num_prompts, budget_maps))
    try:
        played, bounds = defaultdict(list), defaultdict(list)
        for meta, output in executor.run(_tasks(executor, targets, methods, budgets, repeats, num_prompts, seed, config,
                                                settings, tokens, maps)):
            if isinstance(meta, Play):
                played[(meta.label, meta.method, meta.budget)].append((meta, output))
                if progress:
                    progress(meta.rollouts)
            else:  # a chunk's ceilings: (label, budget, its first prompt)
                bounds[meta[:2]].append((meta[2], output))
        report = ReplayReport({label: _summarise(played, label, methods, budgets, repeats) for label in targets})
        for label, target in targets.items():
            if with_ceilings:
                report.ceilings[label] = target_ceiling_rows(bounds, label, budgets, target, seed, *settings)
            if per_prompt:
                report.prompts[label] = prompt_rows(played, bounds, label, methods, budgets, target.prompt_ids)
            _add_multipliers(_curve(executor, target), report.results[label], report.ceilings.get(label, []), tokens)
    finally:
        executor.close()
    return report


def replay_rollouts(targets: dict[str, Target], methods: list[str], budgets: list[int], repeats: int,
                    num_prompts: int | None = None, budget_maps: dict | None = None) -> int:
    """The rollouts a replay will play (the total its ``progress`` adds up to)."""
    total = 0
    for label, target in targets.items():
        count = num_prompts if isinstance(target, World) else as_bank(target).num_prompts
        played = (budget_maps or {}).get(label) or {}
        total += sum(played.get((m, b), b) for m in methods for b in budgets) * repeats * (count or 0)
    return total


def _executor(workers: int | None, rollouts: int):
    on_ray = workers is not None and workers > 1
    if workers is None:
        on_ray = bool(os.environ.get("RAY_ADDRESS")) or ((os.cpu_count() or 1) > 1 and rollouts >= RAY_FROM_ROLLOUTS)
    if not on_ray:
        return LocalExecutor()
    from pipeline.distributed.replay_executor import RayExecutor

    return RayExecutor(workers)


def _tasks(executor, targets: dict, methods, budgets, repeats, num_prompts, seed, config, ceilings_settings, tokens,
           maps) -> Iterator[Task]:
    """Every task of the replay, a world's largest first, a bank's chunk by chunk (each chunk shared
    once; its ceilings with ``ceilings_settings``, (discoveries a prompt, discovery fraction), none
    where that is None)."""
    for label, target in targets.items():
        if isinstance(target, World):
            _warm_world(target, budgets, methods, config)
            world = executor.share(target)
            plays = _plays(label, methods, budgets, 0, num_prompts, repeats, seed, config, tokens, maps[label])
            yield from (Task(play, (p, world), p) for p in sorted(plays, key=lambda p: -p.rollouts))
            continue
        for first, count, chunk in _chunks(executor, target):
            plays = _plays(label, methods, budgets, first, first + count, repeats, seed, config, tokens, maps[label],
                           bank=True)
            yield from (Task(play, (p, chunk, first), p) for p in sorted(plays, key=lambda p: -p.rollouts))
            if ceilings_settings:
                yield from (Task(ceilings, (chunk, first, budget, seed, *ceilings_settings), (label, budget, first))
                            for budget in budgets)


def _chunks(executor, bank: BankChunks) -> Iterator[tuple[int, int, object]]:
    """(first prompt, prompts, what tasks read them from) of every chunk of a bank: where the tasks see
    the bank's files, a slice of a file each reads itself (many at once); else the prompts, read here
    and handed over (through Ray's object store)."""
    if executor.reads_files and isinstance(bank, StreamedBank):
        yield from ((piece.first, piece.count, piece) for piece in bank.slices())
    else:
        yield from ((first, len(prompts), executor.share(prompts)) for first, prompts in bank.chunks())


def _plays(label, methods, budgets, start, stop, repeats, seed, config, tokens, played, bank: bool = False) -> list[Play]:
    """The tasks of prompts [start, stop), each at most ``EPISODE_ROLLOUTS_PER_TASK`` rollouts at the
    largest N any method plays at the budget: several prompts a task, or on a bank, where one
    prompt's repeats hold more, that prompt's repeats in near-equal parts (at least a repeat a part;
    a world's task holds at least a prompt). The methods of a budget are cut alike, so that they
    share their streams."""
    plays = []
    for budget in budgets:
        largest = max(played[(method, budget)] for method in methods)
        per_task = max(1, EPISODE_ROLLOUTS_PER_TASK // (largest * repeats))
        parts = math.ceil(repeats / max(1, EPISODE_ROLLOUTS_PER_TASK // largest)) if bank else 1
        if parts > 1:
            sizes = [len(chunk) for chunk in np.array_split(np.arange(repeats), parts)]
            ranges = [(index, index + 1, size, part) for index in range(start, stop) for part, size in enumerate(sizes)]
        else:
            ranges = [(first, min(stop, first + per_task), repeats, 0) for first in range(start, stop, per_task)]
        plays += [Play(label, method, budget, first, last, count, seed, config, played[(method, budget)], tokens, part)
                  for first, last, count, part in ranges for method in methods]
    return plays


def _warm_world(world: World, budgets: list[int], methods: list[str], config: SearchConfig) -> None:
    """Fill the world's caches of exact values once, here, so that every task's copy carries them.

    The oracle asks for true state values at horizon N (or N minus the split, with
    ``prediction_budget=remaining``); heavy, bounded and bimodal compute those by quadrature, which
    each worker would otherwise repeat for every task.
    """
    if not any(policy_class(m).needs_true_values for m in methods):
        return
    probe = np.zeros(1)
    for budget in budgets:
        horizons = {budget}
        if config.prediction_budget == PredictionBudget.remaining:
            m, k = config.schedule(budget)
            horizons |= {budget - (j + 1) * m for j in range(k + 1)}
        for n in sorted(h for h in horizons if h >= 1):
            world.state_value(probe, n)
            world.prompt_value(n)


def _accuracy(correct: np.ndarray) -> float | None:
    """The share of right best answers over the episodes of graded prompts (NaN: not graded); None if none is."""
    graded = correct[~np.isnan(correct)]
    return float(graded.mean()) if graded.size else None


def _summarise(played: dict, label: str, methods, budgets, repeats) -> list[MethodResult]:
    results, bests = [], {}
    for budget in budgets:
        for method in methods:
            ordered = in_order(played, label, method, budget)
            task, parts = ordered[0][0], [output for _, output in ordered]
            best = bests[(method, budget)] = joined(ordered, "best")
            accuracy = None if parts[0].correct is None else _accuracy(joined(ordered, "correct"))
            exceeded = None if parts[0].exceeded is None else bool(any(p.exceeded.any() for p in parts))
            rollouts, generated, rm_tokens, rm_items = (sum(p.spend for p in parts) / best.size).tolist()
            results.append(MethodResult(method, budget, float(best.mean()), _ci95(best, repeats), None, None, accuracy,
                                        rollouts, best.shape[0], repeats, task.played, generated, rm_tokens, rm_items,
                                        pool_exceeded=exceeded))
    for result in results:
        if ("oracle", result.budget) in bests:
            result.regret_vs_oracle = float(bests[("oracle", result.budget)].mean()) - result.mean_best_reward
        if ("bon", result.budget) in bests and result.method != "bon":
            difference = bests[(result.method, result.budget)] - bests[("bon", result.budget)]
            result.vs_bon, result.vs_bon_ci95 = float(difference.mean()), _ci95(difference, repeats)
    return results


def _ci95(values: np.ndarray, repeats: int) -> float:
    """95% half-width of the mean of (prompts, repeats) values: prompts differ, repeats of one are exchangeable."""
    if repeats > 1:
        return 1.96 * math.sqrt(values.var(axis=1, ddof=1).sum() / repeats) / values.shape[0]
    return 1.96 * float(values.std(ddof=1)) / math.sqrt(values.size) if values.size > 1 else float("nan")


def _add_multipliers(curve_at: CurveAt, results: list[MethodResult], ceiling_rows: list[dict], tokens: TokenModel) -> None:
    """Multipliers in rollouts and in generated tokens: n* BoN rollouts (``find_multipliers``: n* / N)
    over the rollouts the method spent, and n* whole responses' tokens over the tokens it generated;
    and the range of the rollouts' multiplier over the mean best reward's 95% interval (the ends of the
    interval read on the same exact curve): where best-of-N's curve is flat, a small difference in mean
    best reward moves a multiplier far."""
    cells = [Cell(r.mean_best_reward, r.ci95, r.budget) for r in results]
    cells += [Cell(row["mean_best_reward"], row["ci95"], row["budget"]) for row in ceiling_rows]
    ends = [Cell(r.mean_best_reward + side * r.ci95, 0.0, r.budget) for r in results for side in (-1, 1)
            if math.isfinite(r.ci95)]
    ends += [Cell(row["mean_best_reward"] + side * row["ci95"], 0.0, row["budget"]) for row in ceiling_rows
             for side in (-1, 1) if math.isfinite(row["ci95"])]
    found = find_multipliers(curve_at, cells + ends)
    for r, multiplier in zip(results, found):
        r.compute_multiplier = per_cost(multiplier, r.budget, r.rollouts_mean)
        r.token_multiplier = per_cost(multiplier, r.budget, r.tokens_mean / tokens.mean_response_tokens)
    for row, multiplier in zip(ceiling_rows, found[len(results):len(cells)]):
        row["compute_multiplier"] = multiplier
    at_ends = iter(found[len(cells):])
    for r in results:
        if math.isfinite(r.ci95):
            r.compute_multiplier_range = [per_cost(next(at_ends), r.budget, r.rollouts_mean) for _ in range(2)]
    for row in ceiling_rows:  # a ceiling spends its N exactly
        if math.isfinite(row["ci95"]):
            row["compute_multiplier_range"] = [next(at_ends), next(at_ends)]


def _curve(executor, target) -> CurveAt:
    """The exact BoN curve averaged over the prompts (a world's prompts are all alike); a bank's
    evaluated in a pass over its chunks for each set of n."""
    if isinstance(target, World):
        return curve_of(target.prompt_value)

    def curve_at(ns: list[int]) -> dict[int, float]:
        tasks = (Task(bon_values, (chunk, ns), first) for first, _, chunk in _chunks(executor, target))
        values = np.concatenate([v for _, v in sorted(executor.run(tasks), key=lambda pair: pair[0])])
        return {n: float(np.mean(np.ascontiguousarray(values[:, j]))) for j, n in enumerate(ns)}

    return curve_at


def _check_request(target, label, methods, budgets, repeats, num_prompts, config, strict, played):
    check_methods(methods)
    check_budgets(budgets)
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats!r}")
    if isinstance(target, World):
        if num_prompts is None or num_prompts < 1:
            raise ConfigError(f"--prompts must be >= 1 for a world, got {num_prompts!r}")
        check_bound_covers(config, target.reward_bounds[1], target.describe())
        return
    where = f"bank {label}".strip()
    if target.num_prompts == 0:
        raise ConfigError(f"{where} holds no prompts")
    check_bound_covers(config, target.max_reward, where)
    pool, largest = target.smallest_pool, max(played.values())
    if strict and largest > pool.size:
        raise ConfigError(f"--strict: budget {largest} can draw more rollouts from one state than its pool holds "
                          f"({where}, prompt {pool.prompt_id!r} state {pool.state}: {pool.size} rewards); use budgets "
                          f"<= {pool.size} or leave out --strict")


def format_table(results: list[MethodResult]) -> str:
    """A fixed-width table, one row per (budget, method): multipliers in rollouts and in generated
    tokens, tokens per episode, the N played where it differs from the budget, the paired difference
    from bon; on a bank, a ``pool`` column marks redrawn pools."""
    on_bank = any(r.pool_exceeded is not None for r in results)
    header = (f"{'method':<15}{'N':>6}{'played':>7}  {'mean best reward':>24}  {'vs bon (paired)':>20}  {'x rollouts':>10}  "
              f"{'95%':>17}  {'x tokens':>10}  {'tokens':>8}  {'regret':>8}  {'accuracy':>8}")
    header += f"  {'pool':>7}" if on_bank else ""
    lines = [header, "-" * len(header)]
    for r in results:
        regret = "-" if r.regret_vs_oracle is None else f"{r.regret_vs_oracle:+.4f}"
        accuracy = "-" if r.accuracy is None else f"{r.accuracy:.3f}"
        digits = interval_digits(r.ci95)
        reward = f"{r.mean_best_reward:.{digits}f} +- {r.ci95:.{digits}f}"
        versus = "-" if r.vs_bon is None else f"{r.vs_bon:+.{digits}f} +- {r.vs_bon_ci95:.{digits}f}"
        played = "" if r.played_budget in (0, r.budget) else str(r.played_budget)
        spread = format_multiplier_range(r.compute_multiplier_range)
        line = (f"{r.method:<15}{r.budget:>6}{played:>7}  {reward:>24}  {versus:>20}  {format_multiplier(r.compute_multiplier):>10}  "
                f"{spread:>17}  {format_multiplier(r.token_multiplier):>10}  {r.tokens_mean:>8.0f}  {regret:>8}  {accuracy:>8}")
        lines.append(line + (f"  {'redrawn' if r.pool_exceeded else '-':>7}" if on_bank else ""))
    if any(r.pool_exceeded for r in results):
        lines.append(POOL_NOTE)
    return "\n".join(lines)


def results_as_dicts(results: list[MethodResult]) -> list[dict]:
    return [asdict(r) for r in results]
