"""The statistics of ``slg_adaptive``: what the rollouts left add to the best reward so far, and the
prompt's own quantile scale on which states and the prompt are compared.

Pure numpy/scipy. SLG's answer is the best reward of *every* rollout drawn, so the value of sending
the n rollouts left to a node is not that node's V_n but the expected *final* best
``U = E[max(b, M_n)]``, b the best reward already seen and M_n the largest of the node's next n
rewards. For a normal node, M_n = mu + sigma Z_n (Z_n the maximum of n standard normals) and

    U = mu + sigma G_n((b - mu)/sigma),     G_n(t) = E[max(t, Z_n)] = E(n) + int_{-inf}^t Phi(x)^n dx,

with G_n tabulated once per n (cached) and interpolated. :class:`QuantileScale` maps rewards to
the prompt's own quantiles (Phi^-1 of its CDF), where the prompt is standard normal whatever the
reward's shape; the policy models a state there as normal with the mean and sd of its scores.

Also here: a tail fit of equal-length samples by partial sorting (the arithmetic of
``pipeline.stats.tail.fit_tail_rows`` without NaN padding, O(L) per row).

Not here: where the rollouts go (``pipeline.search.policies``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special

from pipeline.stats.tail import tail_constants

# G_n is tabulated on [GRID_LOW, GRID_HIGH]. Below, Phi(x)^n < 1e-23 and G_n = E(n) (np.interp
# holds the end value); above, 1 - Phi(x)^n < n 1e-32 and G_n(t) = t.
GRID_LOW, GRID_HIGH, GRID_STEP = -10.0, 12.0, 0.005
_GRID = np.arange(GRID_LOW, GRID_HIGH + GRID_STEP / 2, GRID_STEP)


_LOG_CDF = special.log_ndtr(_GRID)
_ZERO = int(round(-GRID_LOW / GRID_STEP))  # the grid index of x = 0


@functools.lru_cache(maxsize=16384)
def _final_best_table(n: int) -> np.ndarray:
    """G_n on the grid, by the trapezoid rule: G_n(t) = G_n(x_0) + int_{x_0}^t Phi(x)^n dx.

    G_n(0) = E[max(0, Z_n)] = int_0^inf (1 - Phi(x)^n) dx, integrated on the same grid (the
    integrand is below n 1e-32 past its end); no quadrature per n, so a new n costs ~0.1 ms.
    """
    cdf_of_max = np.exp(n * _LOG_CDF)
    running = np.concatenate([[0.0], np.cumsum((cdf_of_max[1:] + cdf_of_max[:-1]) * (GRID_STEP / 2))])
    survival = -np.expm1(n * _LOG_CDF[_ZERO:])
    at_zero = float(np.sum((survival[1:] + survival[:-1]) * (GRID_STEP / 2)))
    table = at_zero + running - running[_ZERO]
    table.flags.writeable = False
    return table


def expected_max_above(threshold, n: int) -> np.ndarray:
    """G_n(t) = E[max(t, Z_n)], Z_n the maximum of n >= 1 standard normals; t an array (-inf allowed).

    The trapezoid table (step 0.005) agrees with quadrature to 1e-5 (checked in the tests).
    """
    t = np.asarray(threshold, dtype=float)
    return np.where(t >= GRID_HIGH, t, np.interp(t, _GRID, _final_best_table(int(n))))


def expected_final_best(mu, sigma, best, n) -> np.ndarray:
    """U = E[max(best, M_n)], M_n = mu + sigma Z_n; arrays of one shape (n may be a scalar).

    sigma = 0 (a node that always gives mu) gives max(best, mu); n = 0 gives best; best = -inf
    gives V_n = mu + sigma E(n).
    """
    mu, sigma, best = (np.asarray(a, dtype=float) for a in (mu, sigma, best))
    n = np.broadcast_to(np.asarray(n, dtype=np.int64), mu.shape)
    spread = sigma > 0
    with np.errstate(invalid="ignore"):
        t = (best - mu) / np.where(spread, sigma, 1.0)
    counts = np.maximum(n, 1)
    first = int(counts.flat[0]) if counts.size else 1
    if counts.size == 0 or (counts == first).all():
        g = expected_max_above(t, first)
    else:
        g = np.empty(t.shape)
        for k in np.unique(counts):
            rows = counts == k
            g[rows] = expected_max_above(t[rows], int(k))
    value = np.where(spread, mu + np.where(spread, sigma, 0.0) * g, np.maximum(best, mu))
    return np.where(n >= 1, value, best)


def fit_tail_full_rows(rewards: np.ndarray, tail_fraction: float):
    """(mu, sigma, n_tail) of each row of a (rows, L) array with no missing values.

    The arithmetic of ``pipeline.stats.tail.fit_tail_rows`` (numpy's linear-interpolation percentile,
    the ``>=`` tail, ddof = 1, the rounding floor for ties) with a partial sort in place of a full
    sort. Degenerate tails give sigma = 0 and mu = the row's maximum.
    """
    rewards = np.asarray(rewards, dtype=float)
    rows, length = rewards.shape
    if length == 0:
        return np.full(rows, np.nan), np.full(rows, np.nan), np.zeros(rows, dtype=np.int64)
    _, lam, delta = tail_constants(tail_fraction)
    position = (length - 1) * (1.0 - tail_fraction)
    below = int(np.floor(position))
    above = min(below + 1, length - 1)
    parted = np.partition(rewards, (below, above), axis=1) if length > 1 else rewards
    low, high = parted[:, below], parted[:, above]
    weight = position - below
    # numpy's _lerp: a + (b - a) t, computed from the nearer end for t >= 0.5
    threshold = high - (high - low) * (1 - weight) if weight >= 0.5 else low + (high - low) * weight
    in_tail = rewards >= threshold[:, None]
    n_tail = in_tail.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tail_mean = np.where(in_tail, rewards, 0.0).sum(axis=1) / n_tail
        deviations = np.where(in_tail, rewards - tail_mean[:, None], 0.0)
        tail_var = np.einsum("ij,ij->i", deviations, deviations) / (n_tail - 1)
    rounding_floor = (8 * np.finfo(float).eps * np.abs(rewards).max(axis=1)) ** 2
    degenerate = (n_tail < 2) | ~(tail_var > rounding_floor)
    sigma = np.where(degenerate, 0.0, np.sqrt(np.where(degenerate, 0.0, tail_var) / delta))
    mu = np.where(degenerate, rewards.max(axis=1), tail_mean - sigma * lam)
    return mu, sigma, n_tail


class QuantileScale:
    """The prompt's own quantile scale: a reward x scores Phi^-1(F(x)), F the prompt's reward CDF.

    Built from each episode's prompt rewards (B, r) (NaN, a dropped score, counts as the worst).
    On this scale the prompt's rewards are standard normal whatever their shape, so comparing a
    state with the prompt does not depend on monotone transforms of the reward (a squashed,
    saturating or skewed scorer). F is the empirical CDF: the i-th smallest of r rewards (0-based)
    scores Phi^-1((i + 1/2)/r), tied rewards take their mean score, values in between are
    interpolated linearly. From the (r - sqrt(r))-th reward up, where the empirical CDF is a few
    wide steps, scores follow the least-squares line through the top sqrt(r) order statistics, and
    continue along it beyond the largest reward; below the smallest they continue at the slope
    1/sigma, sigma the prompt's upper-tail fit (tail fraction q). The map is a monotone piecewise-
    linear function per episode, evaluated for all episodes with one ``searchsorted``.
    ``tail_fit`` keeps the prompt's (mu, sigma, n_tail).
    """

    def __init__(self, root_rewards: np.ndarray, tail_fraction: float):
        rewards = np.asarray(root_rewards, dtype=float)
        if np.isnan(rewards).any():
            floor = np.nanmin(np.where(np.isnan(rewards), np.inf, rewards), axis=1, keepdims=True)
            rewards = np.where(np.isnan(rewards), floor, rewards)
        batch, size = rewards.shape
        knots = np.sort(rewards, axis=1)
        scores = np.broadcast_to(special.ndtri((np.arange(size) + 0.5) / size), knots.shape).copy()
        # Rows are laid end to end, each shifted into its own band, so one searchsorted serves all.
        self._low = float(knots.min())
        self._span = float(knots.max()) - self._low + 1.0
        self._band = 4.0 * self._span
        flat = (knots + (np.arange(batch) * self._band)[:, None]).ravel()
        if (np.diff(knots, axis=1) == 0).any():  # ties: each takes the mean score of its block
            _, group, tied = np.unique(flat, return_inverse=True, return_counts=True)
            scores = (np.bincount(group, weights=scores.ravel()) / tied)[group].reshape(batch, size)
        self.tail_fit = fit_tail_full_rows(rewards, tail_fraction)
        sigma = self.tail_fit[1]
        below = np.where(sigma > 0, 1.0 / np.where(sigma > 0, sigma, 1.0), 0.0)
        above = below
        top = max(3, int(round(math.sqrt(size))))
        if top < size:
            xs, ys = knots[:, -top:], scores[:, -top:]
            x_mean, y_mean = xs.mean(axis=1, keepdims=True), ys.mean(axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                slope = ((xs - x_mean) * (ys - y_mean)).sum(axis=1) / ((xs - x_mean) ** 2).sum(axis=1)
            smooth = np.isfinite(slope) & (slope > 0)
            scores[:, -top:] = np.where(smooth[:, None], y_mean + slope[:, None] * (xs - x_mean), ys)
            scores = np.maximum.accumulate(scores, axis=1)  # where the line starts below the step before it
            above = np.where(smooth, slope, above)
        with np.errstate(invalid="ignore", divide="ignore"):
            inner = np.where(np.diff(knots, axis=1) > 0, np.diff(scores, axis=1) / np.diff(knots, axis=1), 0.0)
        # segment k (0..r) lies left of knot k; its line passes through knot max(k-1, 0)
        self._slope = np.concatenate([below[:, None], inner, above[:, None]], axis=1)
        self._knots, self._scores, self._flat = knots, scores, flat
        self.batch, self.size = batch, size

    def scores(self, values: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Scores of ``values`` (V, k) against the prompts of episodes ``rows`` (V,), default all B."""
        values = np.asarray(values, dtype=float)
        rows = np.arange(self.batch) if rows is None else np.asarray(rows)
        missing = np.isnan(values)  # a dropped score stays NaN
        within = np.clip(np.where(missing, self._low, values), self._low - self._span, self._low + 2.0 * self._span)
        segment = np.searchsorted(self._flat, within + (rows * self._band)[:, None]) - (rows * self.size)[:, None]
        anchor = np.maximum(segment - 1, 0)
        row = rows[:, None]
        return self._scores[row, anchor] + self._slope[row, segment] * (values - self._knots[row, anchor])
