"""Exact best-of-n values of finite reward pools: the ground truth that predictions are checked against.

Pure numpy/scipy. A pool is an empirical distribution (a bank state's rewards, a prompt's rewards);
the expected maximum of n draws from it has a closed form through the CDF of the maximum,
computed here in log space so that pools of 10^6 values and n of 10^6 stay exact to rounding.
"""

from __future__ import annotations

import numpy as np
from scipy import special


def expected_max_of_pool(pool, n: int, replace: bool = True) -> float:
    """E[max of n draws] from the empirical distribution of ``pool``.

    With the pool sorted, x_(1) <= ... <= x_(L), and F_i = P(max <= x_(i)):
    E[max] = x_(L) - sum_{i<L} (x_(i+1) - x_(i)) F_i, every term non-negative, where
    F_i = (i/L)^n with replacement and C(i, n)/C(L, n) without (n <= L), both as exp of a log.
    """
    values = _check_pool(pool)
    n = _check_draws(n)
    size = values.size
    if not replace and n > size:
        raise ValueError(f"cannot draw n={n} without replacement from a pool of {size}")
    ranks = np.arange(1, size, dtype=float)  # F is only needed below the top value
    if replace:
        log_cdf = n * np.log(ranks / size)
    else:
        log_cdf = np.full(ranks.shape, -np.inf)
        feasible = ranks >= n
        log_cdf[feasible] = _log_binom(ranks[feasible], n) - _log_binom(size, n)
    return _max_from_log_cdf(np.sort(values), log_cdf)


def expected_max_of_weighted_pool(values, weights, n) -> np.ndarray:
    """E[max of n draws with replacement] where value i is drawn with probability weights[i].

    This is a bank prompt's BoN value: a rollout from the prompt picks a state uniformly and then
    one of its rewards uniformly, so reward j of state i weighs 1/(S * L_i). ``n`` may be an array;
    returns an array shaped like ``n``.
    """
    return PoolCurve(values, weights).expected_max(n)


class PoolCurve:
    """The best-of-n curve of one weighted pool, sorted once and evaluated for many n.

    Equal values may come in any order (their gaps are 0), so the sort need not be stable. For large
    n the terms with n log F_i < -746 are exactly 0 in double precision (exp underflows) and are
    left out: a pool of 10^6 at n = 10^5 costs 1% of the full sum."""

    def __init__(self, values, weights=None):
        values = _check_pool(values)
        weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=float)
        if weights.shape != values.shape or (weights < 0).any() or not weights.sum() > 0:
            raise ValueError("weights must be non-negative, not all zero, one per value")
        order = np.argsort(values)
        self.sorted_values = values[order]
        self._gaps = np.diff(self.sorted_values)
        cdf = np.cumsum(weights[order])
        self._log_cdf = np.log(np.clip(cdf[:-1] / cdf[-1], 1e-300, 1.0))  # ascending

    def expected_max(self, n) -> np.ndarray:
        ns = np.asarray(n)
        out = []
        for k in ns.ravel():
            k = _check_draws(k)
            start = int(np.searchsorted(self._log_cdf, -746.0 / k, side="left"))  # below: exp(k log F) == 0
            out.append(float(self.sorted_values[-1] - np.dot(self._gaps[start:], np.exp(k * self._log_cdf[start:]))))
        return np.array(out).reshape(ns.shape)


def _max_from_log_cdf(sorted_values: np.ndarray, log_cdf_below_top: np.ndarray) -> float:
    gaps = np.diff(sorted_values)
    return float(sorted_values[-1] - np.dot(gaps, np.exp(log_cdf_below_top)))


def _log_binom(total, k):
    return special.gammaln(np.asarray(total) + 1) - special.gammaln(k + 1) - special.gammaln(np.asarray(total) - k + 1)


def _check_pool(pool) -> np.ndarray:
    values = np.asarray(pool, dtype=float).ravel()
    if values.size == 0:
        raise ValueError("pool is empty")
    if not np.isfinite(values).all():
        raise ValueError(f"pool contains a non-finite value ({values[~np.isfinite(values)][0]!r})")
    return values


def _check_draws(n) -> int:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)
