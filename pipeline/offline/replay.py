"""Offline evaluation of the policies on a simulated world or a reward bank: the experiment engine.

No models, no Ray: episodes are played by the in-process sources of ``pipeline.offline.episodes`` in
large batches, spread over worker processes. For every (method, budget) it reports the mean best
reward with its 95% interval, the compute multiplier against exact BoN, the regret against the
oracle and, where rollouts carry ``correct``, the accuracy of the answer (docs/formats.md, ``slg replay``).

Episodes of different methods at the same budget use the same random streams (common random
numbers), so ``slg`` and ``oracle`` see identical root rollouts and state rewards, and differences
between methods are measured with less noise than their intervals suggest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.errors import ConfigError
from pipeline.offline.episodes import BankPrompt, BankSource, WorldSource, run_episodes
from pipeline.offline.worlds import World
from pipeline.search.config import PredictionBudget, SearchConfig, check_bound_covers, validate_search_config
from pipeline.search.methods import check_budgets, check_methods, policy_class
from pipeline.stats.pool import PoolCurve

EPISODE_ROLLOUTS_PER_TASK = 1_000_000  # episodes x budget per task: bounds a worker's memory
MULTIPLIER_SEARCH_LIMIT = 1024         # the BoN budget searched for the multiplier, in units of N


@dataclass
class MethodResult:
    method: str
    budget: int
    mean_best_reward: float
    ci95: float
    compute_multiplier: float | str | None
    regret_vs_oracle: float | None
    accuracy: float | None
    rollouts_mean: float
    prompts: int
    repeats: int


def replay(target: World | list[BankPrompt], methods: list[str], budgets: list[int], repeats: int,
           num_prompts: int | None = None, seed: int = 0, config: SearchConfig | None = None,
           workers: int | None = None, progress: Callable[[int], None] | None = None) -> list[MethodResult]:
    """Evaluate ``methods`` at each budget on a world (``num_prompts`` fresh prompts) or a bank."""
    return replay_many({"": target}, methods, budgets, repeats, num_prompts, seed, config, workers, progress)[""]


def replay_many(targets: dict[str, World | list[BankPrompt]], methods: list[str], budgets: list[int], repeats: int,
                num_prompts: int | None = None, seed: int = 0, config: SearchConfig | None = None,
                workers: int | None = None, progress: Callable[[int], None] | None = None) -> dict[str, list[MethodResult]]:
    """``replay`` of several worlds or banks as one job: one pool of workers, the largest tasks first.

    ``progress``, if given, is called with the number of rollouts each finished task played (their
    total is :func:`replay_rollouts`). Results per target, keyed like ``targets``.
    """
    config = config or SearchConfig()
    for label, target in targets.items():
        _check_request(target, label, methods, budgets, repeats, num_prompts, config)
    validate_search_config(config, budgets)
    tasks = []
    for label, target in targets.items():
        if isinstance(target, World):
            _warm_world(target, budgets, methods, config)
        prompt_count = num_prompts if isinstance(target, World) else len(target)
        for budget in budgets:
            per_task = max(1, EPISODE_ROLLOUTS_PER_TASK // (budget * repeats))
            for start in range(0, prompt_count, per_task):
                stop = min(prompt_count, start + per_task)
                unit = target if isinstance(target, World) else target[start:stop]
                tasks += [(label, method, budget, start, stop, unit, repeats, seed, config) for method in methods]
    # Largest first, so that the pool's last minutes are not one worker alone on N = 4096.
    order = sorted(range(len(tasks)), key=lambda i: -_task_rollouts(tasks[i]))
    outputs: list = [None] * len(tasks)
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_play_task, tasks[i]): i for i in order}
            for future in as_completed(futures):
                outputs[futures[future]] = future.result()
                if progress:
                    progress(_task_rollouts(tasks[futures[future]]))
    else:
        for i in order:
            outputs[i] = _play_task(tasks[i])
            if progress:
                progress(_task_rollouts(tasks[i]))
    results = {}
    for label, target in targets.items():
        prompt_count = num_prompts if isinstance(target, World) else len(target)
        mine = [out for task, out in zip(tasks, outputs) if task[0] == label]
        results[label] = _summarise(target, methods, budgets, repeats, prompt_count, mine)
    return results


def replay_rollouts(targets: dict[str, World | list[BankPrompt]], methods: list[str], budgets: list[int],
                    repeats: int, num_prompts: int | None = None) -> int:
    """The rollouts a ``replay_many`` call will play (the total its ``progress`` adds up to)."""
    total = 0
    for target in targets.values():
        prompt_count = num_prompts if isinstance(target, World) else len(target)
        total += len(methods) * sum(budgets) * repeats * prompt_count
    return total


def _task_rollouts(task) -> int:
    _, _, budget, start, stop, _, repeats, _, _ = task
    return budget * repeats * (stop - start)


def _warm_world(world: World, budgets: list[int], methods: list[str], config: SearchConfig) -> None:
    """Fill the world's caches of exact values once, here, so that every task's copy carries them.

    The oracle asks for true state values at horizon N (or N minus the split, with
    ``prediction_budget=remaining``); heavy, bounded and bimodal compute those by quadrature, which
    each worker process would otherwise repeat for every task.
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


def _play_task(task):
    """One (method, budget, prompt range): per-prompt best rewards (P, R), correct (P, R) or None, spend."""
    _, method, budget, start, stop, unit, repeats, seed, config = task
    cls = policy_class(method)
    if isinstance(unit, World):
        batch = (stop - start) * repeats
        source = WorldSource(unit, batch, np.random.default_rng([seed, budget, start]),
                             prefix_rng=np.random.default_rng([seed, budget, start, 2]) if cls.scores_prefixes else None)
        policy = cls(budget, batch, config, rng=np.random.default_rng([seed, budget, start, 1]),
                     true_value=source.true_value)
        ledger = run_episodes(policy, source)
        best = ledger.best_reward.reshape(stop - start, repeats)
        correct = ledger.best_correct.reshape(stop - start, repeats) if ledger.has_correct else None
        return method, budget, best, correct, ledger.spent.mean()
    bests, corrects, spends = [], [], []
    for offset, prompt in enumerate(unit):
        source = BankSource(prompt, repeats, np.random.default_rng([seed, budget, start + offset]))
        policy = cls(budget, repeats, config, rng=np.random.default_rng([seed, budget, start + offset, 1]),
                     true_value=source.true_value)
        ledger = run_episodes(policy, source)
        bests.append(ledger.best_reward)
        corrects.append(ledger.best_correct if ledger.has_correct else None)
        spends.append(ledger.spent.mean())
    correct = None if corrects[0] is None else np.stack(corrects)
    return method, budget, np.stack(bests), correct, float(np.mean(spends))


def _summarise(target, methods, budgets, repeats, prompt_count, outputs) -> list[MethodResult]:
    curve = bon_curve(target)
    gathered: dict[tuple[str, int], list] = {}
    for method, budget, best, correct, spent in outputs:
        gathered.setdefault((method, budget), []).append((best, correct, spent, best.shape[0]))
    means: dict[tuple[str, int], float] = {}
    results = []
    for budget in budgets:
        for method in methods:
            parts = gathered[(method, budget)]
            best = np.concatenate([p[0] for p in parts])
            mean = float(best.mean())
            means[(method, budget)] = mean
            if repeats > 1:
                ci95 = 1.96 * math.sqrt(best.var(axis=1, ddof=1).sum() / repeats) / best.shape[0]
            else:
                ci95 = 1.96 * float(best.std(ddof=1)) / math.sqrt(best.size) if best.size > 1 else float("nan")
            accuracy = None
            if parts[0][1] is not None:
                accuracy = float(np.concatenate([p[1] for p in parts]).mean())
            spent = sum(p[2] * p[3] for p in parts) / best.shape[0]
            results.append(MethodResult(method, budget, mean, ci95, compute_multiplier(curve, mean, budget), None,
                                        accuracy, float(spent), prompt_count, repeats))
    for result in results:
        if ("oracle", result.budget) in means:
            result.regret_vs_oracle = means[("oracle", result.budget)] - result.mean_best_reward
    return results


def bon_curve(target: World | list[BankPrompt]):
    """n -> exact BoN value averaged over the prompts (a world's prompts are all alike)."""
    if isinstance(target, World):
        return target.prompt_value
    curves = [PoolCurve(p.rewards, p.prompt_weights()) for p in target]
    return lambda n: float(np.mean([c.expected_max(n) for c in curves]))


def compute_multiplier(curve, mean_best_reward: float, budget: int) -> float | str:
    """n*/N, n* the smallest BoN budget whose exact value reaches ``mean_best_reward``.

    A lower bound (">1024") when even 1024 N does not reach it, as with saturated rewards where BoN
    approaches the maximum but never quite gets there.
    """
    limit = MULTIPLIER_SEARCH_LIMIT * budget
    target = mean_best_reward - 1e-12 * max(1.0, abs(mean_best_reward))
    if curve(limit) < target:
        return f">{MULTIPLIER_SEARCH_LIMIT}"
    low, high = 1, limit
    while low < high:
        middle = (low + high) // 2
        if curve(middle) >= target:
            high = middle
        else:
            low = middle + 1
    return low / budget


def _check_request(target, label, methods, budgets, repeats, num_prompts, config):
    check_methods(methods)
    check_budgets(budgets)
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats!r}")
    if isinstance(target, World) and (num_prompts is None or num_prompts < 1):
        raise ConfigError(f"--prompts must be >= 1 for a world, got {num_prompts!r}")
    if isinstance(target, World):
        check_bound_covers(config, target.reward_bounds[1], target.describe())
    elif target:
        check_bound_covers(config, max(prompt.rewards.max() for prompt in target), f"bank {label}".strip())


def format_table(results: list[MethodResult]) -> str:
    """A fixed-width table, one row per (budget, method)."""
    header = f"{'method':<14}{'N':>7}  {'mean best reward':>26}  {'multiplier':>10}  {'regret':>8}  {'accuracy':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        multiplier = r.compute_multiplier if isinstance(r.compute_multiplier, str) else f"{r.compute_multiplier:.2f}x"
        regret = "-" if r.regret_vs_oracle is None else f"{r.regret_vs_oracle:+.4f}"
        accuracy = "-" if r.accuracy is None else f"{r.accuracy:.3f}"
        digits = 4 if not r.ci95 > 0 else min(8, max(4, 1 - math.floor(math.log10(r.ci95))))
        reward = f"{r.mean_best_reward:.{digits}f} +- {r.ci95:.{digits}f}"
        lines.append(f"{r.method:<14}{r.budget:>7}  {reward:>26}  {multiplier:>10}  {regret:>8}  {accuracy:>8}")
    return "\n".join(lines)


def results_as_dicts(results: list[MethodResult]) -> list[dict]:
    return [asdict(r) for r in results]
