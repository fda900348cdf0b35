"""The prompt's own quantile scale, on which ``slg_adaptive`` compares states with the prompt.

Pure numpy/scipy. A reward x scores Phi^-1(F(x)), F the prompt's reward CDF estimated from its
root sample: there the prompt is standard normal whatever the reward's shape (squashed,
saturating, skewed), so comparing a state with fresh prompt draws does not depend on monotone
transforms of the reward.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from pipeline.stats.tail import fit_tail_full_rows

BAND = 4.0  # each row's band in the searchsorted layout, in units of the rewards' range (knots lie in [0, 1])


class QuantileScale:
    """The prompt's own quantile scale: a reward x scores Phi^-1(F(x)), F the prompt's reward CDF.

    Built from each episode's prompt rewards (B, r) (NaN, a dropped score, counts as the worst; a row
    of NaN only is one tied value).
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
            # a row of no reward at all (every score dropped) is one tied value: an infinite floor
            # would stretch every row's band to infinity
            floor = np.where(np.isfinite(floor), floor, 0.0)
            rewards = np.where(np.isnan(rewards), floor, rewards)
        batch, size = rewards.shape
        # The map is built in units of the rewards' range from the lowest, so that its slopes do not
        # depend on the rewards' scale (subnormal steps would overflow them) and rows laid end to
        # end, each shifted into its own band, serve one searchsorted for all.
        self._low = float(rewards.min())
        self._span = (float(rewards.max()) - self._low) or 1.0
        knots = (np.sort(rewards, axis=1) - self._low) / self._span
        scores = np.broadcast_to(special.ndtri((np.arange(size) + 0.5) / size), knots.shape).copy()
        flat = (knots + (np.arange(batch) * BAND)[:, None]).ravel()
        if (np.diff(knots, axis=1) == 0).any():  # ties: each takes the mean score of its block
            _, group, tied = np.unique(flat, return_inverse=True, return_counts=True)
            scores = (np.bincount(group, weights=scores.ravel()) / tied)[group].reshape(batch, size)
        self.tail_fit = fit_tail_full_rows(rewards, tail_fraction)
        sigma = self.tail_fit[1]
        below = np.where(sigma > 0, self._span / np.where(sigma > 0, sigma, 1.0), 0.0)
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
        units = (values - self._low) / self._span
        within = np.clip(np.where(missing, 0.0, units), -1.0, 2.0)  # rows' bands: [-1, 2] about each row's start
        segment = np.searchsorted(self._flat, within + (rows * BAND)[:, None]) - (rows * self.size)[:, None]
        anchor = np.maximum(segment - 1, 0)
        row = rows[:, None]
        return self._scores[row, anchor] + self._slope[row, segment] * (units - self._knots[row, anchor])
