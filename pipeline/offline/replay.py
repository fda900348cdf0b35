"""Offline evaluation of the policies on a simulated world or a reward bank: the experiment engine.

No models, no Ray: episodes are played by the in-process sources of ``pipeline.offline.episodes`` in
large batches, spread over worker processes. For every (method, budget) it reports the mean best
reward with its 95% interval, the compute multiplier against exact BoN in rollouts and in generated
tokens (the sources' token model, ``pipeline.offline.responses``), the regret against the oracle,
the paired difference from ``bon`` where it ran and, where rollouts carry ``correct``, the accuracy of
the answer (docs/formats.md, ``slg replay``).

A method may play another N than the budget it is reported at (``budget_map``: at equal generated
tokens, ``pipeline.offline.equal_cost``): its episodes then draw from the streams of that budget.

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
from pipeline.offline.responses import TokenModel
from pipeline.offline.worlds import World
from pipeline.search.config import PredictionBudget, SearchConfig, check_bound_covers, validate_search_config
from pipeline.search.methods import check_budgets, check_methods, policy_class
from pipeline.stats.pool import PoolCurve

EPISODE_ROLLOUTS_PER_TASK = 1_000_000  # episodes x budget per task: bounds a worker's memory
MULTIPLIER_SEARCH_LIMIT = 1024         # the BoN budget searched for the multiplier, in units of N


@dataclass
class MethodResult:
    method: str
    budget: int                        # the budget reported at (with a budget_map, the N it plays may differ)
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


def replay(target: World | list[BankPrompt], methods: list[str], budgets: list[int], repeats: int,
           num_prompts: int | None = None, seed: int = 0, config: SearchConfig | None = None,
           workers: int | None = None, progress: Callable[[int], None] | None = None,
           tokens: TokenModel | None = None, budget_map: dict | None = None) -> list[MethodResult]:
    """Evaluate ``methods`` at each budget on a world (``num_prompts`` fresh prompts) or a bank."""
    return replay_many({"": target}, methods, budgets, repeats, num_prompts, seed, config, workers, progress, tokens,
                       {"": budget_map} if budget_map else None)[""]


def replay_many(targets: dict[str, World | list[BankPrompt]], methods: list[str], budgets: list[int], repeats: int,
                num_prompts: int | None = None, seed: int = 0, config: SearchConfig | None = None,
                workers: int | None = None, progress: Callable[[int], None] | None = None,
                tokens: TokenModel | None = None, budget_maps: dict | None = None) -> dict[str, list[MethodResult]]:
    """``replay`` of several worlds or banks as one job: one pool of workers, the largest tasks first.

    ``progress``, if given, is called with the number of rollouts each finished task played (their
    total is :func:`replay_rollouts`). ``budget_maps[label][(method, budget)]``: the N that method
    plays for that budget on that target (default: the budget). Results per target, keyed like ``targets``.
    """
    config = config or SearchConfig()
    for label, target in targets.items():
        _check_request(target, label, methods, budgets, repeats, num_prompts, config)
    played_budgets = sorted({n for mapping in (budget_maps or {}).values() for n in (mapping or {}).values()})
    validate_search_config(config, sorted(set(budgets) | set(played_budgets)))
    tasks = []
    for label, target in targets.items():
        if isinstance(target, World):
            _warm_world(target, budgets, methods, config)
        prompt_count = num_prompts if isinstance(target, World) else len(target)
        played = (budget_maps or {}).get(label) or {}
        for budget in budgets:
            for method in methods:
                n = played.get((method, budget), budget)
                per_task = max(1, EPISODE_ROLLOUTS_PER_TASK // (n * repeats))
                for start in range(0, prompt_count, per_task):
                    stop = min(prompt_count, start + per_task)
                    unit = target if isinstance(target, World) else target[start:stop]
                    tasks.append((label, method, budget, n, start, stop, unit, repeats, seed, config, tokens))
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
        results[label] = _summarise(target, methods, budgets, repeats, prompt_count, mine, tokens or TokenModel())
    return results


def replay_rollouts(targets: dict[str, World | list[BankPrompt]], methods: list[str], budgets: list[int],
                    repeats: int, num_prompts: int | None = None, budget_maps: dict | None = None) -> int:
    """The rollouts a ``replay_many`` call will play (the total its ``progress`` adds up to)."""
    total = 0
    for label, target in targets.items():
        prompt_count = num_prompts if isinstance(target, World) else len(target)
        played = (budget_maps or {}).get(label) or {}
        total += sum(played.get((m, b), b) for m in methods for b in budgets) * repeats * prompt_count
    return total


def _task_rollouts(task) -> int:
    _, _, _, played, start, stop, _, repeats, _, _, _ = task
    return played * repeats * (stop - start)


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
    """One (method, budget, prompt range): (method, budget, per-prompt best rewards (P, R), correct (P, R)
    or None, per-episode means of (rollouts, generated tokens, RM tokens, RM items), the N played).
    Streams are keyed by the budget reported (common to the methods compared there), not the N played."""
    _, method, budget, played, start, stop, unit, repeats, seed, config, tokens = task
    cls = policy_class(method)
    if isinstance(unit, World):
        batch = (stop - start) * repeats
        source = WorldSource(unit, batch, np.random.default_rng([seed, budget, start]),
                             prefix_rng=np.random.default_rng([seed, budget, start, 2]) if cls.scores_prefixes else None,
                             tokens=tokens, token_rng=np.random.default_rng([seed, budget, start, 3]))
        policy = cls(played, batch, config, rng=np.random.default_rng([seed, budget, start, 1]),
                     true_value=source.true_value)
        ledger = run_episodes(policy, source)
        best = ledger.best_reward.reshape(stop - start, repeats)
        correct = ledger.best_correct.reshape(stop - start, repeats) if ledger.has_correct else None
        return method, budget, best, correct, _spend(ledger), played
    bests, corrects, spends = [], [], []
    for offset, prompt in enumerate(unit):
        source = BankSource(prompt, repeats, np.random.default_rng([seed, budget, start + offset]), tokens=tokens,
                            token_rng=np.random.default_rng([seed, budget, start + offset, 3]))
        policy = cls(played, repeats, config, rng=np.random.default_rng([seed, budget, start + offset, 1]),
                     true_value=source.true_value)
        ledger = run_episodes(policy, source)
        bests.append(ledger.best_reward)
        corrects.append(ledger.best_correct if ledger.has_correct else None)
        spends.append(_spend(ledger))
    correct = None if corrects[0] is None else np.stack(corrects)
    return method, budget, np.stack(bests), correct, np.mean(spends, axis=0), played


def _spend(ledger) -> np.ndarray:
    """Per-episode means of rollouts, generated tokens, RM tokens and RM items."""
    return np.array([ledger.spent.mean(), ledger.tokens.mean(), ledger.rm_tokens.mean(), ledger.scored.mean()])


def _summarise(target, methods, budgets, repeats, prompt_count, outputs, tokens: TokenModel) -> list[MethodResult]:
    curve = bon_curve(target)
    gathered: dict[tuple[str, int], list] = {}
    for method, budget, best, correct, spent, played in outputs:
        gathered.setdefault((method, budget), []).append((best, correct, spent, best.shape[0], played))
    means: dict[tuple[str, int], float] = {}
    bests: dict[tuple[str, int], np.ndarray] = {}
    results = []
    for budget in budgets:
        for method in methods:
            parts = gathered[(method, budget)]
            best = bests[(method, budget)] = np.concatenate([p[0] for p in parts])
            mean = means[(method, budget)] = float(best.mean())
            accuracy = None
            if parts[0][1] is not None:
                accuracy = float(np.concatenate([p[1] for p in parts]).mean())
            rollouts, generated, rm_tokens, rm_items = (sum(p[2] * p[3] for p in parts) / best.shape[0]).tolist()
            needed = bon_budget_reaching(curve, mean, budget)
            results.append(MethodResult(method, budget, mean, _ci95(best, repeats), _ratio(needed, budget, rollouts), None,
                                        accuracy, rollouts, prompt_count, repeats, parts[0][4], generated, rm_tokens,
                                        rm_items, _ratio(needed, budget, generated / tokens.mean_response_tokens)))
    for result in results:
        if ("oracle", result.budget) in means:
            result.regret_vs_oracle = means[("oracle", result.budget)] - result.mean_best_reward
        if ("bon", result.budget) in bests and result.method != "bon":
            difference = bests[(result.method, result.budget)] - bests[("bon", result.budget)]
            result.vs_bon, result.vs_bon_ci95 = float(difference.mean()), _ci95(difference, repeats)
    return results


def _ci95(values: np.ndarray, repeats: int) -> float:
    """95% half-width of the mean of (prompts, repeats) values: prompts differ, repeats of one are exchangeable."""
    if repeats > 1:
        return 1.96 * math.sqrt(values.var(axis=1, ddof=1).sum() / repeats) / values.shape[0]
    return 1.96 * float(values.std(ddof=1)) / math.sqrt(values.size) if values.size > 1 else float("nan")


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
    return _ratio(bon_budget_reaching(curve, mean_best_reward, budget), budget, budget)


def _ratio(needed: int | None, budget: int, cost: float) -> float | str:
    """BoN's cost at ``needed`` rollouts (in units of one BoN rollout) over ``cost``; past the search
    limit, the lower bound at 1024 ``budget`` (">x")."""
    if needed is None:
        return f">{MULTIPLIER_SEARCH_LIMIT * budget / cost:.4g}"
    return needed / cost


def bon_budget_reaching(curve, mean_best_reward: float, budget: int) -> int | None:
    """n*, the smallest BoN budget whose exact value reaches ``mean_best_reward``; None beyond 1024 ``budget``.
    BoN's generated tokens at n* are n* times a whole response's mean (the token multiplier's numerator)."""
    limit = MULTIPLIER_SEARCH_LIMIT * budget
    target = mean_best_reward - 1e-12 * max(1.0, abs(mean_best_reward))
    if curve(limit) < target:
        return None
    low, high = 1, limit
    while low < high:
        middle = (low + high) // 2
        if curve(middle) >= target:
            high = middle
        else:
            low = middle + 1
    return low


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
    """A fixed-width table, one row per (budget, method): multipliers in rollouts and in generated
    tokens, tokens per episode, the N played where it differs from the budget, the paired difference from bon."""
    header = (f"{'method':<15}{'N':>6}{'played':>7}  {'mean best reward':>24}  {'vs bon (paired)':>20}  {'x rollouts':>10}  "
              f"{'x tokens':>9}  {'tokens':>8}  {'regret':>8}  {'accuracy':>8}")
    lines = [header, "-" * len(header)]
    for r in results:
        regret = "-" if r.regret_vs_oracle is None else f"{r.regret_vs_oracle:+.4f}"
        accuracy = "-" if r.accuracy is None else f"{r.accuracy:.3f}"
        digits = 4 if not r.ci95 > 0 else min(8, max(4, 1 - math.floor(math.log10(r.ci95))))
        reward = f"{r.mean_best_reward:.{digits}f} +- {r.ci95:.{digits}f}"
        versus = "-" if r.vs_bon is None else f"{r.vs_bon:+.{digits}f} +- {r.vs_bon_ci95:.{digits}f}"
        played = "" if r.played_budget in (0, r.budget) else str(r.played_budget)
        lines.append(f"{r.method:<15}{r.budget:>6}{played:>7}  {reward:>24}  {versus:>20}  {_times(r.compute_multiplier):>10}  "
                     f"{_times(r.token_multiplier):>9}  {r.tokens_mean:>8.0f}  {regret:>8}  {accuracy:>8}")
    return "\n".join(lines)


def _times(multiplier) -> str:
    return "-" if multiplier is None else multiplier if isinstance(multiplier, str) else f"{multiplier:.2f}x"


def results_as_dicts(results: list[MethodResult]) -> list[dict]:
    return [asdict(r) for r in results]
