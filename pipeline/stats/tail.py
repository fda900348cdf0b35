"""The reward-tail estimator: fit a normal to the upper tail of a state's rewards, predict best-of-n.

Pure numpy/scipy (docs/method.md, "The tail estimator"). This module knows nothing about states, prompts
or engines: it turns a list of rewards into a truncated-normal fit and a predicted scaling curve
``n -> V_n``. The batched form (:func:`fit_tail_rows`) fits many equal-length samples at once and is
what the search policies call (:func:`fit_tail_full_rows`, the same arithmetic by partial sorting, for
samples without gaps); :func:`fit_tail` is the one-sample form of the same code.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import integrate, special, stats

DEFAULT_TAIL_FRACTION = 0.2  # q in the paper; the reference code's value
EXPECTED_MAX_RULES = ("exact", "quantile")


@dataclass(frozen=True)
class TailFit:
    """A normal N(mu, sigma^2) fitted to the upper ``tail_fraction`` of a sample.

    ``sigma == 0`` marks a degenerate tail (fewer than 2 points at or above the threshold, or no
    spread there); then ``mu`` is the sample maximum and every prediction is that maximum.
    """

    mu: float
    sigma: float
    n_tail: int
    threshold: float

    @property
    def degenerate(self) -> bool:
        return self.sigma == 0.0


@functools.lru_cache(maxsize=64)
def tail_constants(tail_fraction: float) -> tuple[float, float, float]:
    """(z, lam, delta) for a normal truncated below at its ``1 - q`` quantile.

    z = Phi^-1(1-q), lam = phi(z)/q (inverse Mills ratio), delta = 1 + z*lam - lam^2, so that the
    truncated normal has mean mu + sigma*lam and variance sigma^2*delta (docs/method.md, the tail estimator, step 2).
    """
    q = _check_tail_fraction(tail_fraction)
    z = float(stats.norm.ppf(1.0 - q))
    lam = float(stats.norm.pdf(z) / q)
    delta = 1.0 + z * lam - lam * lam
    return z, lam, delta


def fit_tail(rewards, tail_fraction: float = DEFAULT_TAIL_FRACTION) -> TailFit:
    """Fit the upper tail of ``rewards`` by truncated-normal moment inversion.

    Following the reference code (docs/method.md, the tail estimator, steps 1-3 and 5):
    ``thr = percentile(r, 100(1-q))`` (linear interpolation), ``tail = r[r >= thr]``,
    ``sigma = sqrt(var(tail, ddof=1)/delta)``, ``mu = mean(tail) - sigma*lam``; fewer than two tail
    points or zero spread give ``sigma = 0, mu = max(r)``.

    Raises ``ValueError`` for an empty sample, a non-finite value or a tail fraction outside (0, 1).
    """
    values = np.asarray(rewards, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"rewards must be a 1-D sequence, got shape {values.shape}")
    if values.size == 0:
        raise ValueError("rewards is empty: the tail fit needs at least one reward")
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"rewards contain a non-finite value ({values[bad][0]!r}) at index {int(np.argmax(bad))}")
    mu, sigma, n_tail, threshold = fit_tail_rows(values[None, :], tail_fraction)
    return TailFit(float(mu[0]), float(sigma[0]), int(n_tail[0]), float(threshold[0]))


def fit_tail_rows(rewards: np.ndarray, tail_fraction: float = DEFAULT_TAIL_FRACTION):
    """Fit each row of a (rows, L) reward array; NaN marks an absent reward (rows may be ragged).

    Returns arrays (mu, sigma, n_tail, threshold). The same arithmetic as :func:`fit_tail`,
    vectorised over rows, with numpy's linear-interpolation percentile written out so that rows of
    different lengths fit in one call. A row with no rewards gives NaN. Zero spread means a tail
    variance below the rounding noise of its mean (ties that differ in the last bits are ties).
    """
    _, lam, delta = tail_constants(tail_fraction)
    rewards = np.asarray(rewards, dtype=float)
    present = ~np.isnan(rewards)
    count = present.sum(axis=1)
    ordered = np.sort(rewards, axis=1)  # NaN sorts last
    position = np.maximum(count - 1, 0) * (1.0 - tail_fraction)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, np.maximum(count - 1, 0))
    rows = np.arange(rewards.shape[0])
    low, high = ordered[rows, below], ordered[rows, above]
    weight = position - below
    # numpy's _lerp: a + (b - a) t, computed from the nearer end for t >= 0.5
    threshold = np.where(weight >= 0.5, high - (high - low) * (1 - weight), low + (high - low) * weight)
    in_tail = present & (rewards >= threshold[:, None])
    n_tail = in_tail.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tail_mean = np.where(in_tail, rewards, 0.0).sum(axis=1) / n_tail
        deviations = np.where(in_tail, rewards - tail_mean[:, None], 0.0)
        tail_var = (deviations * deviations).sum(axis=1) / (n_tail - 1)
        largest = np.where(present, rewards, -np.inf).max(axis=1)
        rounding_floor = (8 * np.finfo(float).eps * np.where(present, np.abs(rewards), 0.0).max(axis=1)) ** 2
    degenerate = (n_tail < 2) | ~(tail_var > rounding_floor)
    sigma = np.where(degenerate, 0.0, np.sqrt(np.where(degenerate, 0.0, tail_var) / delta))
    mu = np.where(degenerate, largest, tail_mean - sigma * lam)
    empty = count == 0
    return np.where(empty, np.nan, mu), np.where(empty, np.nan, sigma), n_tail, np.where(empty, np.nan, threshold)


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


def prediction_stderr(sigma: np.ndarray, n_tail: np.ndarray, expected_max: np.ndarray,
                      tail_fraction: float = DEFAULT_TAIL_FRACTION) -> np.ndarray:
    """Approximate standard error of V_hat_n = mu + sigma E(n) from a tail of ``n_tail`` points.

    V_hat = mean(tail) + sigma (E(n) - lam) with sigma = sd(tail)/sqrt(delta); treating the tail
    mean and sd as independent with the normal-sample variances sd^2/k and sd^2/(2k):
    se = sd(tail)/sqrt(k) * sqrt(1 + (E(n) - lam)^2 / (2 delta)). A rough scale for confidence
    bonuses, not a calibrated interval; 0 for degenerate fits.
    """
    _, lam, delta = tail_constants(tail_fraction)
    tail_sd = sigma * np.sqrt(delta)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = tail_sd / np.sqrt(n_tail) * np.sqrt(1.0 + (expected_max - lam) ** 2 / (2.0 * delta))
    return np.where(sigma > 0, se, 0.0)


def expected_max_std_normal(n: int, rule: str = "exact") -> float:
    """E(n): the expected maximum of ``n`` i.i.d. standard normals, or the reference approximation.

    ``rule="exact"``: E(n) = int_0^inf (1 - Phi(x)^n) dx - int_-inf^0 Phi(x)^n dx, integrated
    adaptively around the mode of the maximum (accurate to 1e-6 for 1 <= n <= 2^53; cached).
    ``rule="quantile"``: Phi^-1(1 - 1/n), the reference code's approximation (7.2 % low at
    n = 100, 4.7 % at n = 1000); n = 1 gives 0.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if rule == "exact":
        return _expected_max_exact(int(n))
    if rule == "quantile":
        return _expected_max_quantile(int(n))
    raise ValueError(f"unknown expected-max rule {rule!r}; expected one of {EXPECTED_MAX_RULES}")


@functools.lru_cache(maxsize=4096)
def _expected_max_quantile(n: int) -> float:
    """Phi^-1(1 - 1/n), cached: scipy's ``norm.ppf`` costs about 100 us a call, and the policies ask for
    the same few n in every round of every search."""
    return 0.0 if n == 1 else float(stats.norm.ppf(1.0 - 1.0 / n))


@functools.lru_cache(maxsize=4096)
def _expected_max_exact(n: int) -> float:
    if n == 1:
        return 0.0

    def cdf_of_max(x: float) -> float:
        return math.exp(n * special.log_ndtr(x))

    mode = float(stats.norm.ppf(1.0 - 1.0 / n)) if n > 2 else 0.5
    width = 1.0 / math.sqrt(2.0 * math.log(n) + 1.0)
    breaks = sorted({0.0, max(mode - 4 * width, 0.0), mode, mode + 10 * width})
    upper = [b for b in breaks if b > 0] + [40.0]
    positive = 0.0
    lo = 0.0
    for hi in upper:
        if hi > lo:
            positive += integrate.quad(lambda x: -math.expm1(n * special.log_ndtr(x)), lo, hi,
                                       epsabs=1e-12, epsrel=1e-12, limit=200)[0]
            lo = hi
    negative = integrate.quad(cdf_of_max, -40.0, 0.0, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
    return positive - negative


def predict_best_of_n(rewards, n: int, tail_fraction: float = DEFAULT_TAIL_FRACTION,
                      rule: str = "exact", upper_bound: float | None = None) -> float:
    """V_hat_n = mu + sigma * E(n) from the tail fit of ``rewards`` (docs/method.md, the tail estimator, step 4).

    ``upper_bound`` (optional) is the largest reward the scorer can give, for bounded rewards
    (probabilities, pass rates): the prediction is clipped to it, since the normal tail model would
    otherwise extrapolate past what the reward can reach.
    """
    fit = fit_tail(rewards, tail_fraction)
    value = fit.mu + fit.sigma * expected_max_std_normal(n, rule)
    if upper_bound is not None:
        value = min(value, float(upper_bound))
    return value


def _check_tail_fraction(tail_fraction: float) -> float:
    q = float(tail_fraction)
    if not 0.0 < q < 1.0:
        raise ValueError(f"tail_fraction must be in (0, 1), got {tail_fraction!r}")
    return q
