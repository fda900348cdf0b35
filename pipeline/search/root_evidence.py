"""What a root says about its states: ``slg_share``'s regime tests and its picks on continuous rewards.

Pure numpy. Rows are episodes, columns root rollouts; a root rollout is a draw of its own state, so its
prefix score s and its reward r are two readings of that state's mean. From the root's own moments:
how much a unit of prefix score is worth (``prefix_slope``); how it changes a state's width
(``width_slope``), and so whether the states' upper tails fall as prefix scores rise
(``tails_fall``; ``tails_fall_unsquashed`` reads the prompt's quantile scale where the rewards look
squashed near their top, ``rewards_saturate``); whether the states look narrow against the spread
between them (``states_look_narrow``); which rollout's state has the highest mean given both readings
(``evidence_rank``, ``best_evidence_state``), or the best reward (``best_reward_state``); and whether a
state's first rollouts are far narrower than the root says its states are (``first_half_far_narrower``).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy.stats import chi2

from pipeline.search import reward_levels
from pipeline.search.protocol import NO_NODE, Rollouts
from pipeline.stats.quantile_scale import QuantileScale


def root_moments(root: Rollouts):
    """Per episode, over the root rollouts whose state, prefix score and reward are known: (known,
    mean score, mean reward, var of scores, var of rewards, their covariance); moments with 1/n. A
    reading that is one value in every known rollout (a root that drew one state: its prefix score)
    has a variance of exactly 0, not the ~1e-34 a rounded mean leaves, which would pass as spread."""
    score, rewards = root.state_score, root.rewards
    known = ~np.isnan(score) & ~np.isnan(rewards) & (root.state_index >= 0)
    count = np.maximum(known.sum(axis=1), 1)
    mean_score = np.where(known, score, 0.0).sum(axis=1) / count
    mean_reward = np.where(known, rewards, 0.0).sum(axis=1) / count
    d_score = np.where(known & ~_one_value(score, known)[:, None], score - mean_score[:, None], 0.0)
    d_reward = np.where(known & ~_one_value(rewards, known)[:, None], rewards - mean_reward[:, None], 0.0)
    return (known, mean_score, mean_reward, (d_score ** 2).sum(axis=1) / count, (d_reward ** 2).sum(axis=1) / count,
            (d_score * d_reward).sum(axis=1) / count)


def _one_value(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Per row, whether its ``known`` values are all one value."""
    return np.where(known, values, np.inf).min(axis=1) == np.where(known, values, -np.inf).max(axis=1)


NARROW_MIN_PAIRS = 32  # root rollouts with a known state, score and reward that the width estimate needs


def states_look_narrow(root: Rollouts, narrow: float, moments: tuple | None = None) -> np.ndarray:
    """Episodes whose states look narrow: the root's estimate of a state's own variance, Var(r) - Cov(s, r)
    (as in ``best_evidence_state``: Cov(s, r) is the variance of the states' means), below ``narrow``
    times Var(r), from at least ``NARROW_MIN_PAIRS`` root rollouts (a covariance of n pairs has an sd of
    about sqrt((Var(s) Var(r) + Cov(s, r)^2) / n): a quarter of Var(r) at 32 where both vary alike).
    Rewards of such states barely spread beyond their means: SLG's
    screening of several candidates buys nothing their prefix scores and root rewards do not already
    say, and each of its rollouts is one fewer fresh prompt draw. ``moments``: ``root_moments(root)``
    where the caller has it."""
    if narrow <= 0 or root.state_score is None or root.state_index is None:  # off (a noisy root can estimate < 0)
        return np.zeros(root.rewards.shape[0], dtype=bool)
    known, _, _, _, var_reward, covariance = moments or root_moments(root)
    return (known.sum(axis=1) >= NARROW_MIN_PAIRS) & (var_reward - covariance < narrow * var_reward)


def in_sds(values: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Each row's values in its standard deviations from its mean; 0 where a row has no spread."""
    sd = np.sqrt(variance)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, (values - mean[:, None]) / np.where(sd > 0, sd, 1.0), 0.0)


def prefix_slope(root: Rollouts, moments: tuple | None = None) -> np.ndarray:
    """Per episode, the root's least-squares slope of reward on prefix score: the reward a unit of
    prefix score is worth (a root rollout's reward is a draw of its own state). -inf where the
    prefixes were not scored, or fewer than 3 pairs (or no spread of scores) leave it unknown.
    ``moments``: ``root_moments(root)`` where the caller has it."""
    if root.state_score is None or root.state_index is None:
        return np.full(root.rewards.shape[0], -np.inf)
    known, _, _, var_score, _, covariance = moments or root_moments(root)
    usable = (known.sum(axis=1) >= 3) & (var_score > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(usable, covariance / np.where(usable, var_score, 1.0), -np.inf)


def width_slope(root: Rollouts, moments: tuple) -> np.ndarray:
    """Per episode, how much a state's width (the sd of its rewards) changes per unit of prefix score:
    the root's least-squares slope on prefix score of each rollout's distance from the root's line of
    reward on prefix score, |r - fitted r|, times sqrt(pi / 2) (a normal's mean distance from its
    mean is sqrt(2 / pi) sds). A root rollout's reward is a draw of its own state, so its distance
    reads that state's width, and the prefix score's noise is independent of it. Where that noise
    is large the distance also holds the spread of means the score does not explain, which dilutes
    this slope somewhat more than ``prefix_slope``: ``tails_fall`` then errs toward not firing. NaN
    where the prefixes were not scored or their scores do not spread. ``moments``:
    ``root_moments(root)`` (needed: this reads the line it fits)."""
    if root.state_score is None or root.state_index is None:
        return np.full(root.rewards.shape[0], np.nan)
    return _width_line(root, moments)[2] * np.sqrt(np.pi / 2)


def width_slope_error(root: Rollouts, moments: tuple) -> np.ndarray:
    """Per episode, the standard error of ``width_slope``: that of a least-squares slope (n - 2
    degrees of freedom), from the scatter of the distances |r - fitted r| about their own line on
    prefix score, times the same sqrt(pi / 2). NaN where ``width_slope`` is, or fewer than 3 pairs.
    ``moments``: ``root_moments(root)``."""
    if root.state_score is None or root.state_index is None:
        return np.full(root.rewards.shape[0], np.nan)
    known, _, _, var_score, _, _ = moments
    d_score, distance, line = _width_line(root, moments)
    count = known.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scatter = np.where(known, distance - distance.sum(axis=1, keepdims=True) / count[:, None] - line[:, None] * d_score, 0.0)
        error = np.sqrt((scatter ** 2).sum(axis=1) / (count - 2) / (count * var_score)) * np.sqrt(np.pi / 2)
    return np.where(count >= 3, error, np.nan)


def _width_line(root: Rollouts, moments: tuple):
    """(d_score, distance, slope): each root rollout's prefix score from the mean score, its distance
    |r - fitted r| from the root's line of reward on prefix score (0 where not known), and the
    least-squares slope of those distances on prefix score per episode (``width_slope`` before its
    sqrt(pi / 2))."""
    known, _, _, var_score, _, _ = moments
    d_score, residual = _off_the_line(root, moments)
    count = np.maximum(known.sum(axis=1), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.where(known, np.abs(residual), 0.0)
        # d_score sums to 0 over the known rollouts: no need to centre the distances
        return d_score, distance, np.where(known, d_score * distance, 0.0).sum(axis=1) / count / var_score


SATURATION_SKEW = -0.5  # residuals' skewness (rollouts of above-average prefix score) below which rewards read as squashed


def rewards_saturate(root: Rollouts, moments: tuple) -> np.ndarray:
    """Per episode, whether the root's rewards look squashed near their top (a reward model that
    saturates, a bounded score): the skewness of the residuals from the root's line of reward on
    prefix score, r - fitted r, over the rollouts of above-average prefix score, below
    ``SATURATION_SKEW``. A state near the top of a squashed scale has a short upper tail and a long
    lower one; a normal state's residuals are symmetric. False where fewer than 3 such rollouts or no
    spread. ``moments``: ``root_moments(root)``."""
    if root.state_score is None or root.state_index is None:
        return np.zeros(root.rewards.shape[0], dtype=bool)
    known = moments[0]
    d_score, residual = _off_the_line(root, moments)
    upper = known & (d_score > 0)
    count = upper.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        centred = np.where(upper, residual - np.where(upper, residual, 0.0).sum(axis=1, keepdims=True)
                           / np.maximum(count, 1)[:, None], 0.0)
        skew = (centred ** 3).sum(axis=1) / count / ((centred ** 2).sum(axis=1) / count) ** 1.5
    return (count >= 3) & (skew < SATURATION_SKEW)  # NaN (no spread) < x: False


def _off_the_line(root: Rollouts, moments: tuple):
    """(B, r) each root rollout's prefix score from the root's mean score, and its reward's residual
    from the root's line of reward on prefix score (NaN where the scores do not spread)."""
    _, mean_score, mean_reward, var_score, _, covariance = moments
    with np.errstate(invalid="ignore", divide="ignore"):
        d_score = root.state_score - mean_score[:, None]
        return d_score, root.rewards - mean_reward[:, None] - (covariance / var_score)[:, None] * d_score


def tails_fall(root: Rollouts, moments: tuple, expected_max: float, margin=0.0) -> np.ndarray:
    """Per episode, whether the root says its states' upper tails fall as prefix scores rise: the
    slope of reward on prefix score (``prefix_slope``) plus ``expected_max`` times the slope of a
    state's width (``width_slope``) below 0 (the best of n draws of a normal is about E(n) sds above
    its mean: ``expected_max``). The best tails are then in wide states of low prefix score, which a
    rank by mean puts last. ``margin`` (per episode, or one for all): where a slope of widths is
    noisy, by how many of its standard errors (``width_slope_error``) it must fall below the point
    where the tails stop falling: prefix slope + E x (width slope + margin x its error) below 0.
    False where either slope is unknown. ``moments``: ``root_moments(root)``."""
    slope = prefix_slope(root, moments)
    trend = slope + expected_max * width_slope(root, moments)
    if np.any(margin):  # (the candidates' check and most share rounds ask for none)
        with np.errstate(invalid="ignore"):  # an infinite margin (no check at all) times an error of 0
            trend = trend + np.where(margin > 0, margin * expected_max * width_slope_error(root, moments), 0.0)
    return np.isfinite(slope) & (trend < 0)  # NaN < 0: False


def tails_fall_unsquashed(root: Rollouts, moments: tuple, expected_max: float, tail_fraction: float,
                          margin=0.0) -> np.ndarray:
    """``tails_fall``; but in the episodes whose rewards look squashed near their top
    (``rewards_saturate``), read on the prompt's quantile scale (``QuantileScale``; its
    ``tail_fraction`` only shapes the scale beyond the root's own rewards, which are all this reads):
    there a squashed reward's states look narrower the higher they sit although their tails, on the
    scale before the squashing, do not fall (a best of n keeps its order under any monotone map). It
    fires less often: on a saturating reward, and on normal states whose narrowing skews the
    residuals too. ``margin``: as ``tails_fall``'s. ``moments``: ``root_moments(root)``."""
    falls = tails_fall(root, moments, expected_max, margin)
    squashed = rewards_saturate(root, moments)
    if squashed.any():
        on_scale = dataclasses.replace(root, rewards=QuantileScale(root.rewards, tail_fraction).scores(root.rewards))
        falls = np.where(squashed, tails_fall(on_scale, root_moments(on_scale), expected_max, margin), falls)
    return falls


NOISE_FLOOR = 0.05  # a reading's noise variance is at least this share of its variance (scales that differ)


def best_evidence_state(root: Rollouts, mine: np.ndarray, moments: tuple | None = None) -> np.ndarray:
    """Per episode of ``mine``, the state of the root rollout whose prefix score s and reward r rank
    first by E[state mean | s, r]; NO_NODE elsewhere.

    The model: both are readings of the state's mean m in reward units, s = m + e_s and r = m + e_r,
    with independent errors. Then Cov(s, r) = Var(m), the errors' variances are Var(s) - Var(m) and
    Var(r) - Var(m) (at least ``NOISE_FLOOR`` of Var(s), Var(r)), all from the root; and E[m | s, r]
    ranks as s / Var(e_s) + r / Var(e_r), centred: a noisy prefix score weighs little, a noisy reward
    (a wide state's lucky draw) too. ``moments``: ``root_moments(root)`` where the caller has it."""
    moments = moments or root_moments(root)
    rows, top, found = top_rollout(evidence_rank(root, moments), moments[0] & mine[:, None])
    return np.where(found, root.state_index[rows, top], NO_NODE)


def best_reward_state(root: Rollouts, mine: np.ndarray, moments: tuple) -> np.ndarray:
    """Per episode of ``mine``, the state of the root rollout of the best reward among those whose
    state, prefix score and reward are known; NO_NODE elsewhere. ``moments``: ``root_moments(root)``."""
    rows, top, found = top_rollout(root.rewards, moments[0] & mine[:, None])
    return np.where(found, root.state_index[rows, top], NO_NODE)


def evidence_rank(root: Rollouts, moments: tuple) -> np.ndarray:
    """(B, r): each root rollout's rank by E[its state's mean | its prefix score s, its reward r], the
    model of ``best_evidence_state``: s / Var(e_s) + r / Var(e_r), centred. NaN or infinite where a
    reading is missing or has no spread. ``moments``: ``root_moments(root)``."""
    _, mean_score, mean_reward, var_score, var_reward, covariance = moments
    signal = np.maximum(covariance, 0.0)
    noise_score = np.maximum(var_score - signal, NOISE_FLOOR * var_score)
    noise_reward = np.maximum(var_reward - signal, NOISE_FLOOR * var_reward)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((root.state_score - mean_score[:, None]) / noise_score[:, None]
                + (root.rewards - mean_reward[:, None]) / noise_reward[:, None])


def top_rollout(rank: np.ndarray, allowed: np.ndarray):
    """Per episode, (row, root-rollout index of the highest ``rank`` among ``allowed``, whether there
    is a finite one: a row whose ranks are undefined, 0 / 0 where a reading has no spread, has none)."""
    rank = np.where(allowed, rank, -np.inf)
    top = np.argmax(rank, axis=1)
    rows = np.arange(len(top))
    return rows, top, np.isfinite(rank[rows, top])


def first_half_far_narrower(first_half: np.ndarray, own_variance: np.ndarray, best: np.ndarray, narrow: float,
                            rate_from: int) -> np.ndarray:
    """Per episode, whether a state's first rewards are far narrower than the root's estimate of a
    state's own variance, ``own_variance`` (Var(r) - Cov(s, r)), and their best below ``best`` (a
    narrow state holding the best so far is the prompt's top): their variance (1/n) below ``narrow``
    times the estimate, or, where they are fewer than ``rate_from``, below the fraction that a state
    as wide as the estimate shows as rarely as it shows ``narrow`` at ``rate_from`` rewards
    (``few_rewards_threshold``). Never from fewer than 3 rewards."""
    count = (~np.isnan(first_half)).sum(axis=1)
    threshold = np.array([narrow if n >= rate_from else few_rewards_threshold(int(n), narrow, rate_from) for n in count])
    return ((count >= 3) & (reward_levels.sd_of_finite(first_half) ** 2 < threshold * own_variance)
            & (reward_levels.best_of_finite(first_half) < best))


@functools.lru_cache(maxsize=64)
def few_rewards_threshold(count: int, narrow: float, rate_from: int) -> float:
    """The fraction of a normal state's variance that the variance (1/n) of ``count`` of its rewards
    falls below as often as that of ``rate_from`` rewards falls below ``narrow`` of it: n s^2 / sigma^2
    is chi-square with n - 1 degrees of freedom (once in 400 with 0.1 at 8 rewards: 0.076 at 7, 0.029
    at 5, 0.0017 at 3). A fixed fraction would fire ever more often as n falls (0.1: once in 7 at 3)."""
    if count < 2:
        return 0.0
    rate = chi2.cdf(narrow * rate_from, rate_from - 1)
    return float(chi2.ppf(rate, count - 1) / count)
