"""When ``slg_share``'s few-levels pick gets its share: the prefix gap, the picks that need none, and
the common rival that refuses any of them.

Pure numpy, on a root's rollouts. A state whose prefix score barely leads an average prompt draw's
is often no better than fresh draws, so below N = ``share.ungated_from`` the pick needs a lead of
``share.prefix_gap`` root-reward sds (``clears_a_gate``), or one of the two exceptions there: a lead
over every other state the root drew (``share.lead_gap``, off by default), or root rollouts that all
stayed below the root's best reward (``share.below_best_lead``). At every N, ungated picks included,
a pick gets no share where the root drew another state twice or more that reads as well
(``share.rival_gap``, ``has_a_common_rival``)."""

from __future__ import annotations

import numpy as np

from pipeline.search import reward_levels
from pipeline.search.config import ShareConfig
from pipeline.search.protocol import Rollouts


def off_a_grid_from(start: int | None, budget: int, root: Rollouts, episodes: np.ndarray) -> np.ndarray:
    """The ``episodes`` whose root is not on a grid of levels (``reward_levels.on_a_grid``), from N =
    ``start`` (none below it, or where it is None): the commitments (``share.commit_from``) and the
    picks that need no prefix gap (``share.ungated_from``). For those, from N = 128: a root of 64 or more
    has seen each of a bank prompt's 16 states about four times or more, so the top-ranked state is
    nearly the best one it revealed, and best-of-N, flattening, adds less than that state's tail
    even where its prefix leads the average draw's by little (over twelve banks at 1000 repeats,
    +0.0002 a bank at N = 128, 192 and 256, about four standard errors; toy_t12 +0.0016 at 128; at
    N = 64 it lost: docs/design-record.md, "No prefix gap from N = 128")."""
    if start is None or budget < start or not episodes.any():
        return np.zeros_like(episodes)
    return episodes & ~reward_levels.on_a_grid(root)


def clears_a_gate(root: Rollouts, known: np.ndarray, top: np.ndarray, mean_score: np.ndarray, share: ShareConfig,
                  ungated: np.ndarray | None = None) -> np.ndarray:
    """Per episode, whether the prefix score of root rollout ``top`` is ``share.prefix_gap`` sds of every
    root reward above ``mean_score`` (over the rollouts ``known``), or (``share.lead_gap`` not None) that
    many above every other state's among them (at least one): a prompt's draws mostly of one common state
    have a mean mostly that state's own score. The episodes ``ungated`` clear the gaps whatever their scores.
    Off a grid of levels (``share.below_best_lead`` not None) it also clears where that prefix score is
    ``share.below_best_lead`` sds above ``mean_score`` and every root rollout of its state stayed below
    the root's best reward: the best so far then came from a state the prefix scores rank
    lower, a lucky draw, which the picked state has room to beat; a pick that holds the best must beat
    itself, and fresh draws often do better (toy_t12 at N = 64: +0.0015 a prompt over the gap alone;
    docs/design-record.md, "Below the best, a small lead"). Whichever way it clears, ungated included
    (``share.rival_gap`` not None), a pick clears nothing where the root drew another state twice or
    more whose prefix score is within ``share.rival_gap`` sds of its own (``has_a_common_rival``): fresh
    prompt draws reach that state as often as the root did, so they do about as well as the pick (gains
    up to +0.0008 a prompt on eight of twelve banks at N = 16-96, the others within 0.00005, none lower
    beyond its interval; up to +0.0003 on ungated picks at 128-512, two cells of 41 lower, by 0.00006
    or less; a world, which never draws a state twice, plays the same; docs/design-record.md, "A common
    rival" and "The common rival from N = 128"). A root whose rewards do not spread clears nothing."""
    rows, spread = np.arange(len(top)), reward_levels.sd_of_finite(root.rewards)
    score, picked = root.state_score[rows, top], root.state_index[rows, top]
    clears = score - mean_score > share.prefix_gap * spread
    other = known & (root.state_index != picked[:, None])
    if share.lead_gap is not None:
        best_other = np.where(other, root.state_score, -np.inf).max(axis=1)  # -inf: the root drew no other state
        clears |= (best_other > -np.inf) & (score - best_other > share.lead_gap * spread)
    if share.below_best_lead is not None:
        below = best_root_reward_of(root, picked) < reward_levels.best_of_finite(root.rewards)
        clears |= ~reward_levels.on_a_grid(root) & below & (score - mean_score > share.below_best_lead * spread)
    if ungated is not None:
        clears |= ungated
    if share.rival_gap is not None and clears.any():
        clears &= ~has_a_common_rival(root, known, other, score - share.rival_gap * spread)
    return clears & (spread > 0)


def has_a_common_rival(root: Rollouts, known: np.ndarray, other: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Per episode, whether the root drew a state other than the pick (rollouts ``other``) at least twice
    among the rollouts ``known``, whose prefix score is ``floor`` or more: a common state that reads as
    well as the pick, which fresh prompt draws reach as often as the root did. A state drawn once is
    no rival: where every prompt draw reveals a new state (the simulated worlds) none is."""
    batch, width = known.shape
    # a state is named by the index of its first root rollout (0 .. width - 1): count each row's known ones
    state = np.where(known, root.state_index, 0)
    slots = (np.arange(batch)[:, None] * width + state)[known]
    drawn = np.bincount(slots, minlength=batch * width).reshape(batch, width)
    near = other & (root.state_score >= floor[:, None])
    return (near & (np.take_along_axis(drawn, state, axis=1) >= 2)).any(axis=1)


def best_root_reward_of(root: Rollouts, state: np.ndarray) -> np.ndarray:
    """Per episode, the best reward among the root rollouts through ``state`` (-inf where none, as
    for NO_NODE); the share rounds run only where the root's states are known."""
    return reward_levels.best_of_finite(np.where(root.state_index == state[:, None], root.rewards, np.nan))
