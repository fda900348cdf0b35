"""Rewards with few levels (``slg_share``'s regime tests, pure numpy): whether a root's rewards repeat
(a reward model reading the same response gives the same score, and short responses repeat), whether
they repeat across states (a grid of levels: a verifier's or a judge's score), and whether a state's
rollouts only repeat what its root rollouts showed (``share.repeat_check``); and the row statistics
of rewards with dropped scores that the share rounds read. Rows are episodes; NaN is a dropped score."""

from __future__ import annotations

import numpy as np

from pipeline.search.protocol import Rollouts

REPEAT_FRACTION = 0.1  # root rewards that repeat another, as a share of the root, that make a reward "few levels"


def few_levels(root: Rollouts) -> np.ndarray:
    """Episodes whose root rewards repeat values (a reward with few levels, or responses that repeat)
    and whose prefixes were scored: a regime of ``slg_share``'s share rounds.

    A repeat counts where at least ``REPEAT_FRACTION`` of the root's rewards repeat another (at least
    one): replayed on a bank, rollouts through one state also repeat a reward where the bank redraws
    its finite pool, now and then (64 states of 10^4 rewards: at N = 4096 about one repeat in a root
    of 1024, where responses that really repeat make many)."""
    if root.state_score is None or root.state_index is None:
        return np.zeros(root.rewards.shape[0], dtype=bool)
    scored = (~np.isnan(root.state_score) & (root.state_index >= 0)).any(axis=1)
    return scored & (repeats(root.rewards) >= _enough_repeats(root.rewards))


def on_a_grid(root: Rollouts) -> np.ndarray:
    """Episodes whose root rewards repeat *across states* (at least ``REPEAT_FRACTION`` of the root,
    and one): a reward on a grid of levels (a verifier's, a judge's 1-10), not responses that repeat.
    A reward model reads a state's prefix too, so two states never share a response: in the toy
    models' banks two states' scores coincide in at most 3 roots of 12 to 40 draws in 10,000, once
    each, where a world of 4 to 20 levels shows several in every root."""
    if root.state_index is None:
        return np.zeros(root.rewards.shape[0], dtype=bool)
    order = np.lexsort((root.state_index, root.rewards), axis=1)  # by reward, then state: ties of a reward side by side
    rewards, states = np.take_along_axis(root.rewards, order, axis=1), np.take_along_axis(root.state_index, order, axis=1)
    known = (states[:, 1:] >= 0) & (states[:, :-1] >= 0)
    across = ((np.diff(rewards, axis=1) == 0) & (np.diff(states, axis=1) != 0) & known).sum(axis=1)
    return across >= _enough_repeats(root.rewards)


def _enough_repeats(rewards: np.ndarray) -> np.ndarray:
    """Per row, the repeats that make a root's rewards repeat: ``REPEAT_FRACTION`` of its scored
    rewards, and at least one."""
    return np.maximum(1.0, REPEAT_FRACTION * (~np.isnan(rewards)).sum(axis=1))


def repeats(rewards: np.ndarray) -> np.ndarray:
    """Per row, how many rewards equal another one before them in sorted order: the row's scored
    rewards less its distinct ones (NaN, a dropped score, sorts last and equals nothing)."""
    ordered = np.sort(rewards, axis=1)
    return (ordered[:, 1:] == ordered[:, :-1]).sum(axis=1)  # (np.diff is a Python wrapper: a cost a driver's search feels)


def best_of_finite(rewards: np.ndarray) -> np.ndarray:
    """Each row's largest reward, NaN (a dropped score) left out; -inf for a row with none.
    ``np.nanmax(rewards, axis=1, initial=-np.inf)``'s value at a third of its cost on one-row calls."""
    return np.fmax.reduce(rewards, axis=1, initial=-np.inf)


REPEAT_CHECK_MIN_ROLLOUTS = 2   # from this many, a first half of one reward only repeats (N >= 12 with the defaults)
REPEAT_CHECK_ROLLOUTS = 6       # from this many, one of fewer than REPEAT_CHECK_DISTINCT rewards does (N >= 31)
REPEAT_CHECK_DISTINCT = 3       # fewer distinct rewards than this in a first half of REPEAT_CHECK_ROLLOUTS or more: it repeats


def repeats_itself(first_half: np.ndarray, own_best: np.ndarray) -> np.ndarray:
    """Per episode, whether a state's first half only repeats itself: none of its scored rollouts is
    above ``own_best``, the best reward of the state's root rollouts, and it shows too few distinct
    rewards for its size (one from ``REPEAT_CHECK_MIN_ROLLOUTS`` rollouts; fewer than
    ``REPEAT_CHECK_DISTINCT`` from ``REPEAT_CHECK_ROLLOUTS``). Its prefix already fixes its response
    (a deep state, or a narrow one on a reward of few levels), so the rest of its share would redraw
    what the root holds, where fresh prompt draws find new ones. A small first half (N = 12-30 with
    the defaults) only counts when all its rewards are equal: a wide state's few rollouts often tie."""
    scored = (~np.isnan(first_half)).sum(axis=1)
    top = best_of_finite(first_half)
    distinct = scored - repeats(first_half)
    most_distinct = np.where(scored >= REPEAT_CHECK_ROLLOUTS, REPEAT_CHECK_DISTINCT - 1, 1)
    return (scored >= REPEAT_CHECK_MIN_ROLLOUTS) & (distinct <= most_distinct) & (top <= own_best)


def modal_share(rewards: np.ndarray) -> np.ndarray:
    """Per row, the share of its scored rewards equal to its most frequent one (0 for a row with none;
    NaN, a dropped score, sorts last and equals nothing): ``share.modal_check``'s measure of a state
    that mostly repeats one response."""
    ordered = np.sort(rewards, axis=1)
    same = ordered[:, 1:] == ordered[:, :-1]
    position = np.arange(same.shape[1])
    run = position - np.maximum.accumulate(np.where(same, -1, position), axis=1)  # equal neighbours in a row, ending here
    longest = run.max(axis=1, initial=0) + 1
    scored = (~np.isnan(rewards)).sum(axis=1)
    return np.where(scored > 0, longest / np.maximum(scored, 1), 0.0)


def mean_of_finite(rewards: np.ndarray) -> np.ndarray:
    """Each row's mean reward, NaN (a dropped score) left out; NaN for a row with none."""
    kept = ~np.isnan(rewards)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(kept, rewards, 0.0).sum(axis=1) / kept.sum(axis=1)


def sd_of_finite(rewards: np.ndarray) -> np.ndarray:
    """Each row's standard deviation (1/n), NaN left out; NaN for a row with none. ``np.nanstd``'s
    value at a tenth of its cost on the driver's one-row calls."""
    kept = ~np.isnan(rewards)
    deviations = np.where(kept, rewards - mean_of_finite(rewards)[:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((deviations ** 2).sum(axis=1) / kept.sum(axis=1))
