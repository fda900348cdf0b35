"""What the best-of-n predictor computes on a sample of rewards: the sorted rows and their power
sums, the plug-in (the sample's own exact best-of-n), the normal tail extension beyond the sample
maximum, and the upper-half kurtosis behind the heavy-tail flag.

Pure numpy/scipy; the building blocks of ``pipeline.stats.predict`` and of its simulated normal
reference (``pipeline.stats.normal_reference``).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import special

from pipeline.stats.tail import expected_max_std_normal

_SQRT_HALF = np.sqrt(0.5)
# Simpson nodes of the tail integral by a row's largest n: its error stays below 2e-5 sigma up to
# each n (checked against adaptive quadrature of the model in tests/core/test_predict.py). Far out
# the fall of 1 - F^n gets narrower than 49 nodes resolve: 0.002 sigma off at 10^7, 0.03 at 2^53.
_NODES_BY_N = ((1e4, 49), (1e7, 97), (1e12, 193), (np.inf, 385))
_GRID_CELLS = 4096 * 49  # rows x nodes in one go (the predictor's blocks are 4096 rows)

# --- samples ---------------------------------------------------------------------------------

class SampleRows:
    """Rows sorted ascending (NaN last) and what every model needs from them, computed once.

    ``model`` holds the values the normal tail is fitted to: y = -log(B - x) on rows with a
    bound that no reward reaches ("log rows"), x elsewhere. The order is the same on both scales.
    """

    def __init__(self, rewards: np.ndarray, bound: np.ndarray):
        self.ordered = np.sort(rewards, axis=1)
        self.valid = ~np.isnan(self.ordered)
        self.counts = self.valid.sum(axis=1)
        self.bound = bound
        self.top = self._column(self.counts - 1)
        steps = np.diff(self.ordered, axis=1)
        self.inside = np.arange(1, self.ordered.shape[1])[None, :] < self.counts[:, None]
        self.gaps = np.where(self.inside, steps, 0.0)  # x_(i+1) - x_(i); 0 past the row's end
        differs = (steps != 0) | ~self.valid[:, 1:]
        edge = np.ones((len(self.counts), 1), dtype=bool)
        self.singleton = self.valid & np.concatenate([edge, differs], axis=1) & np.concatenate([differs, edge], axis=1)
        self.interior = self.valid & (self.ordered > self.ordered[:, :1]) & (self.ordered < bound[:, None])
        self.distinct = np.where(self.counts > 0, 1 + (self.inside & (self.gaps > 0)).sum(axis=1), 0)
        self.at_top = (self.valid & (self.ordered == self.top[:, None])).sum(axis=1)
        self.top_gap = np.where(self.at_top < self.counts, self.top - self._column(self.counts - self.at_top - 1), 0.0)
        self.log_rows = np.isfinite(bound) & (self.top < bound) & (self.counts > 0)
        self.model, self.model_top, self.model_gaps = self.ordered, self.top, self.gaps
        if self.log_rows.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                self.model = np.where(self.log_rows[:, None], -np.log(bound[:, None] - self.ordered), self.ordered)
            self.model_top = np.where(self.log_rows, -np.log(np.where(self.log_rows, bound - self.top, 1.0)), self.top)
            self.model_gaps = np.where(self.inside, np.diff(self.model, axis=1), 0.0)

    def _column(self, index):
        return np.take_along_axis(self.ordered, np.clip(index, 0, None)[:, None], axis=1)[:, 0]

    def power_sums(self, n_table: np.ndarray, gaps: np.ndarray | None = None) -> np.ndarray:
        """S[b, j] = sum_i gaps[b, i] (i/m_b)^n[b, j]; the plug-in is top - S (``pipeline.stats.pool``)."""
        gaps = self.gaps if gaps is None else gaps
        out = np.zeros(n_table.shape)
        shared = len(n_table) == 0 or bool((n_table == n_table[:1]).all())
        for m in np.unique(self.counts):
            if m < 2:
                continue
            rows = self.counts == m
            log_rank = np.log(np.arange(1, m) / m)
            if shared:  # one (m - 1, k) matrix for every row of this size
                out[rows] = gaps[rows, : m - 1] @ np.exp(log_rank[:, None] * n_table[0][None, :])
            else:
                out[rows] = np.einsum("bi,bki->bk", gaps[rows, : m - 1], np.exp(n_table[rows][:, :, None] * log_rank))
        return out


def plug_in_rows(rows: SampleRows, n_table: np.ndarray) -> np.ndarray:
    """Exact E[max of n draws with replacement] from each row's sample:
    V = x_(m) - sum_{i<m} (x_(i+1) - x_(i)) (i/m)^n, the pool value of ``pipeline.stats.pool``."""
    return rows.top[:, None] - rows.power_sums(n_table)


# --- the tail extension ------------------------------------------------------------------------

def _simpson_on_squares(count: int):
    """Nodes t = u^2 on [0, 1] and weights with int_0^1 f(t) dt ~ sum w f(t) (Simpson's rule in u)."""
    u = np.linspace(0.0, 1.0, count)
    weights = np.ones(count)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return u ** 2, weights * (u[1] - u[0]) / 3 * 2 * u


_GRIDS = {count: _simpson_on_squares(count) for _, count in _NODES_BY_N}


def _node_counts(largest_n: np.ndarray) -> np.ndarray:
    limits, counts = zip(*_NODES_BY_N)
    return np.asarray(counts)[np.searchsorted(limits, largest_n)]


def extension_rows(rows: SampleRows, n_table, mu, sigma, log_scale=None, sums_fit=None, sums=None):
    """X_n for every row: (on the reward scale, on the scale of the fit).

    The fit is of the rewards x, or of y = -log(B - x) on the rows marked ``log_scale`` (only rows
    with a bound no reward reaches). On the fit's scale the CDF is the sample's, times (1 - pi),
    below the maximum v_m and 1 - pi S((v - mu)/sigma)/S(z) above it, with z = (v_m - mu)/sigma,
    S the normal survival and pi = S(z); so X = v_m - (1 - pi)^n sum_i gaps_i (i/m)^n +
    sigma int_0^T (1 - F^n) dt, T the bound (in units of sigma above the maximum) or infinity.
    On the reward scale a log row has the same body in x and the tail (B - x_m) sigma
    int_0^inf (1 - F^n) exp(-sigma t) dt (E[h(max)] for h(y) = B - exp(-y)): it stays below B.
    A degenerate fit (sigma = 0) or a maximum at the bound gives pi = 0: the plug-in.
    """
    log_scale = np.zeros(len(rows.counts), dtype=bool) if log_scale is None else log_scale & rows.log_rows
    sums = rows.power_sums(n_table) if sums is None else sums
    if sums_fit is None:
        sums_fit = rows.power_sums(n_table, rows.model_gaps) if log_scale.any() else sums
    fit_top = np.where(log_scale, rows.model_top, rows.top)
    reward = rows.top[:, None] - sums
    fitted = fit_top[:, None] - np.where(log_scale[:, None], sums_fit, sums)
    live = (sigma > 0) & (rows.top < rows.bound)
    if not live.any():
        return reward, fitted
    scale, n_live, log_live = sigma[live], n_table[live], log_scale[live]
    z_top = (fit_top[live] - mu[live]) / scale
    pi = special.ndtr(-z_top)
    keep = np.exp(n_live * np.log1p(-pi)[:, None])  # (1 - pi)^n
    # One grid per row in t (units of sigma above the maximum) up to where n pi S(z+t)/S(z) <
    # 1e-12 at the row's largest n (a normal tail falls at least like exp(-t z - t^2/2), z >= 0),
    # or to the bound on the reward scale.
    z_pos = np.maximum(z_top, 0.0)
    reach = np.maximum(np.log(n_live.max(axis=1) * pi) + 12 * np.log(10.0), 1.0)
    t_hi = -z_pos + np.sqrt(z_pos ** 2 + 2 * reach) + 0.5
    t_hi = np.where(log_live, t_hi, np.minimum(t_hi, (rows.bound[live] - rows.top[live]) / scale))
    on_fit, on_reward = np.zeros(n_live.shape), np.zeros(n_live.shape)
    nodes = _node_counts(n_live.max(axis=1))
    for count in np.unique(nodes):
        rows_of_count = np.flatnonzero(nodes == count)
        step = max(1, _GRID_CELLS // int(count))  # rows x nodes as with 49 nodes: the memory stays that of 49
        for start in range(0, len(rows_of_count), step):
            part = rows_of_count[start:start + step]
            on_fit[part], on_reward[part] = _tail_integrals(z_top[part], pi[part], n_live[part], t_hi[part], log_live[part],
                                                            scale[part], *_GRIDS[int(count)])
    body_fit = np.where(log_live[:, None], sums_fit[live], sums[live])
    fitted[live] = fit_top[live][:, None] - keep * body_fit + on_fit * (t_hi * scale)[:, None]
    factor = np.where(log_live, (rows.bound[live] - rows.top[live]) * scale * t_hi, scale * t_hi)
    reward[live] = rows.top[live][:, None] - keep * sums[live] + on_reward * factor[:, None]
    return reward, fitted


def _tail_integrals(z_top, pi, n_table, t_hi, log_scale, scale, grid, weights):
    """int_0^1 (1 - F^n) du on the grid t = t_hi u (the fit's scale), and the same weighted by
    exp(-sigma t) on log rows (the reward scale), per (row, n)."""
    t = t_hi[:, None] * grid[None, :]
    # pi S(z+t)/S(z) through erfcx (S(x) = erfcx(x/sqrt 2) exp(-x^2/2)/2): no underflow far out.
    ratio = special.erfcx((z_top[:, None] + t) * _SQRT_HALF) / special.erfcx(z_top * _SQRT_HALF)[:, None]
    exceed = np.minimum(pi[:, None] * ratio * np.exp(-t * (z_top[:, None] + t / 2)), 1.0 - 1e-16)
    above = -np.expm1(n_table[:, :, None] * np.log1p(-exceed)[:, None, :])  # 1 - F^n on the grid
    jacobian = np.where(log_scale[:, None], np.exp(-scale[:, None] * t), 1.0) * weights[None, :]
    return above @ weights, np.einsum("bkg,bg->bk", above, jacobian)


def upper_kurtosis(rows: SampleRows) -> np.ndarray:
    """Kurtosis of the upper half about the median, mean(d^4) / mean(d^2)^2 with d = x - median
    over the top m - m//2 rewards: how far the top reaches relative to the upper half's spread.
    NaN where it says nothing about a continuous tail: m < 8, ties, few distinct values, a bound."""
    m = rows.counts
    middle = np.take_along_axis(rows.ordered, (m // 2)[:, None], axis=1)
    upper = rows.valid & (np.arange(rows.ordered.shape[1])[None, :] >= (m // 2)[:, None])
    d = np.where(upper, rows.ordered - middle, 0.0)
    reach = np.abs(d).max(axis=1, keepdims=True)
    d = d / np.where(reach > 0, reach, 1.0)  # the ratio is scale-free; unscaled, d ** 4 overflows from |d| ~ 1e77
    size = np.maximum(upper.sum(axis=1), 1)
    second, fourth = (d ** 2).sum(axis=1) / size, (d ** 4).sum(axis=1) / size
    usable = ((m >= 8) & (second > 0) & ~(rows.interior & ~rows.singleton).any(axis=1)
              & (rows.distinct > np.maximum(2, m / 4)) & (rows.top < rows.bound))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(usable, fourth / np.where(second > 0, second, 1.0) ** 2, np.nan)


# --- helpers ---------------------------------------------------------------------------------

def exp_moment(n_table, sigma):
    """E[exp(-sigma (Z_n - E(n)))], Z_n the max of n standard normals, per (row, column)."""
    out = np.empty(n_table.shape)
    scale = np.clip(sigma, 0.0, 20.0)[:, None] * np.ones(n_table.shape)
    for k in np.unique(n_table):
        at = n_table == k
        z, mass = _max_of_normals(float(k))
        out[at] = np.exp(-np.outer(scale[at], z)) @ mass
    return out


@functools.lru_cache(maxsize=1024)
def _max_of_normals(n: float):
    """Cell midpoints z - E(n) and the probability of each cell for the max of n standard normals."""
    edges = np.linspace(-9.0, 9.0, 3601)
    mass = np.diff(np.exp(n * special.log_ndtr(edges)))
    return (edges[:-1] + edges[1:]) / 2 - expected_max_std_normal(int(n)), mass / mass.sum()


def expected_max_table(n_table):
    unique, inverse = np.unique(n_table, return_inverse=True)
    return np.array([expected_max_std_normal(int(k)) for k in unique])[inverse].reshape(n_table.shape)


