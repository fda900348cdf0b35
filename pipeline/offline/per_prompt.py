"""A replay's outputs prompt by prompt: the tasks' per-prompt arrays joined in a bank's order, and
the per-prompt rows that ``slg replay --per-prompt`` writes (docs/formats.md).

Pure numpy. A method's task outputs (``replay_tasks.Played``) hold each prompt's best reward per
repeat; a chunk's ceiling task (``replay_tasks.ceilings``) each prompt's two ceilings, paid
discovery's Monte Carlo variance and best-of-N's exact value. A bank's averages hide where its
room lies: on ``toy_t12`` most of what paid discovery leaves above best-of-N at N = 64 sits in
five of its fifty prompts (docs/method.md, "Ceilings").
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def joined(ordered: list, field: str) -> np.ndarray:
    """(prompts, repeats) of one field of the tasks' outputs, ``ordered`` as (task, output) pairs in
    (first prompt, part) order: a prompt's parts side by side (its repeats), then the prompts one under
    another."""
    return np.concatenate([np.concatenate([getattr(output, field) for _, output in group], axis=1)
                           for _, group in itertools.groupby(ordered, key=lambda pair: pair[0].start)])


def in_order(played: dict, label: str, method: str, budget: int) -> list:
    """The (task, output) pairs of one method and budget on one target, in (first prompt, part) order."""
    return sorted(played[(label, method, budget)], key=lambda pair: (pair[0].start, pair[0].part))


def chunk_ceilings(bounds: dict, label: str, budget: int) -> np.ndarray:
    """(P, 4) of a bank's prompts in its order: clairvoyant ceiling, paid discovery, that estimate's
    variance and best-of-N's exact value (``replay_tasks.ceilings``), from its chunks' tasks keyed by
    first prompt."""
    return np.concatenate([output for _, output in sorted(bounds[(label, budget)], key=lambda pair: pair[0])])


def prompt_rows(played: dict, bounds: dict, label: str, methods: list[str], budgets: list[int],
                prompt_ids: list[str]) -> list[dict]:
    """One row per prompt of a bank and budget: each method's mean best reward over the repeats, and
    where the ceilings ran, the prompt's exact best-of-N value, its clairvoyant ceiling (exact) and
    paid discovery with its Monte Carlo 95% half-width."""
    rows = []
    for budget in budgets:
        means = {method: joined(in_order(played, label, method, budget), "best").mean(axis=1) for method in methods}
        if any(len(values) != len(prompt_ids) for values in means.values()):  # a bank that does not list its prompts
            raise ValueError(f"{label}: {len(prompt_ids)} prompt ids for {len(next(iter(means.values())))} prompts played")
        ceilings = chunk_ceilings(bounds, label, budget) if (label, budget) in bounds else None
        for index, prompt_id in enumerate(prompt_ids):
            row = {"prompt_id": prompt_id, "budget": budget,
                   "mean_best_reward": {method: float(means[method][index]) for method in methods}}
            if ceilings is not None:
                row.update(best_of_n=float(ceilings[index, 3]), clairvoyant=float(ceilings[index, 0]),
                           paid_discovery=float(ceilings[index, 1]), paid_discovery_ci95=1.96 * math.sqrt(float(ceilings[index, 2])))
            rows.append(row)
    return rows
