"""The expected *final* best of sending n more rollouts to a node: what the rollouts left add to the
best reward so far.

Pure numpy/scipy. SLG's answer is the best reward of *every* rollout drawn, so the value of sending
the n rollouts left to a node is not that node's V_n but the expected *final* best
``U = E[max(b, M_n)]``, b the best reward already seen and M_n the largest of the node's next n
rewards. For a normal node, M_n = mu + sigma Z_n (Z_n the maximum of n standard normals) and

    U = mu + sigma G_n((b - mu)/sigma),     G_n(t) = E[max(t, Z_n)] = E(n) + int_{-inf}^t Phi(x)^n dx,

with G_n tabulated once per n (cached) and interpolated. ``slg_adaptive`` compares nodes by U on
the prompt's quantile scale (``pipeline.stats.quantile_scale``). Not here: where the rollouts go
(``pipeline.search``).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import special

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
