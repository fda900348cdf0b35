"""The simulated normal reference of the best-of-n predictor: per sample size m, what the predictor
does on seeded standard-normal samples, which gives the weight w_normal(m, n), the quantiles of the
pivot behind the 95% interval, and the kurtosis reference of the heavy-tail flag.

Pure numpy/scipy. Pivotal for normal rewards (the predictor is location-scale equivariant on the
model scale), so one simulation per m serves every row of that size; it costs ~0.2 s of CPU the
first time a size is met, then it is cached.
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline.stats.sample_rows import SampleRows, extension_rows, upper_kurtosis
from pipeline.stats.tail import expected_max_std_normal, fit_tail_rows

_REFERENCE_SAMPLES = 3000  # normal samples per m behind w_normal, the pivot and the kurtosis reference

# --- the normal reference: w_normal(m, n), pivot quantiles, kurtosis -------------------------

def reference_lookup(counts, n_table, continuity, tail_fraction, alpha):
    """w_normal and the pivot quantiles per (row, column), vectorised per distinct m."""
    weight, low, high = np.zeros(n_table.shape), np.zeros(n_table.shape), np.zeros(n_table.shape)
    for m in np.unique(counts):
        if m < 2:
            continue
        rows = counts == m
        reference = normal_reference(int(m), tail_fraction)
        weight[rows] = reference.weights(n_table[rows])
        low[rows], high[rows] = reference.pivot_quantiles(n_table[rows], weight[rows] * continuity[rows, None], alpha)
    return weight, low, high


class NormalReference:
    """Seeded standard-normal samples of size m and what the predictor does on them, per n.

    Pivotal for normal rewards (the predictor is location-scale equivariant on the model scale),
    so one simulation per m serves every row of that size. n lies on a grid of 8 points per
    doubling (interpolated in log n), a weight on a grid of 0.01.
    """

    _WEIGHT_GRID = np.linspace(0.0, 1.0, 101)

    def __init__(self, m: int, tail_fraction: float):
        sample = np.random.default_rng([m, 20260131]).standard_normal((_REFERENCE_SAMPLES, m))
        self.rows = SampleRows(sample, np.full(_REFERENCE_SAMPLES, np.inf))
        self.mu, self.sigma, _, _ = fit_tail_rows(self.rows.ordered, tail_fraction)
        kurtosis = upper_kurtosis(self.rows)
        if m >= 8:
            self.kurtosis_mean, self.kurtosis_sd = float(np.mean(kurtosis)), float(np.std(kurtosis))
            self.kurtosis_limit = float(np.quantile(kurtosis, 0.99))
        self._cells: dict[int, tuple] = {}
        self._quantiles: dict[tuple, np.ndarray] = {}

    def _cell(self, grid_index: int):
        """(w_normal, plug-in error, extension step, scale) on the samples at n = 2^(index/8)."""
        if grid_index not in self._cells:
            n = max(1, round(2 ** (grid_index / 8)))
            table = np.full((_REFERENCE_SAMPLES, 1), float(n))
            sums = self.rows.power_sums(table)
            plug = self.rows.top - sums[:, 0]
            step = extension_rows(self.rows, table, self.mu, self.sigma, None, sums, sums)[0][:, 0] - plug
            truth = expected_max_std_normal(n)
            weight = float(np.clip(np.mean(step * (truth - plug)) / max(np.mean(step * step), 1e-300), 0.0, 1.0))
            self._cells[grid_index] = (weight, plug - truth, step, np.where(self.sigma > 0, self.sigma, np.nan))
        return self._cells[grid_index]

    def weights(self, n) -> np.ndarray:
        """w_normal at each n: the running maximum of the simulated optimum over n = 1, 2, 4, ...,
        interpolated in log n, so that a prediction never falls as n grows (the optimum itself
        wobbles by a few hundredths)."""
        position = np.log2(np.maximum(np.asarray(n, dtype=float), 1.0))
        top = int(np.floor(position.max(initial=0.0))) + 1
        running = np.maximum.accumulate([self._cell(8 * k)[0] for k in range(top + 1)])
        return np.interp(position, np.arange(top + 1), running)

    def pivot_quantiles(self, n, weight, alpha: float):
        """(q_low, q_high) arrays of (V_hat - V) / sigma_tail for normal rewards at each (n, weight)."""
        position = 8 * np.log2(np.maximum(np.asarray(n, dtype=float), 1.0))
        below = np.floor(position).astype(np.int64)
        frac = position - below
        column = np.clip(np.round(np.asarray(weight) * 100).astype(np.int64), 0, 100)
        low, high = np.zeros(position.shape), np.zeros(position.shape)
        for index in np.unique(below):
            at = below == index
            ends = [self._quantile_table(i, alpha)[column[at]] for i in (index, index + 1)]
            q = (1 - frac[at])[..., None] * ends[0] + frac[at][..., None] * ends[1]
            low[at], high[at] = q[..., 0], q[..., 1]
        return low, high

    def _quantile_table(self, grid_index: int, alpha: float) -> np.ndarray:
        """(101, 2) quantiles of the pivot for the weights 0, 0.01, ..., 1 at one grid n."""
        key = (grid_index, float(alpha))
        if key not in self._quantiles:
            _, plug_error, step, scale = self._cell(grid_index)
            usable = np.isfinite(scale)
            if not usable.any():  # m too small for any tail fit: no spread
                self._quantiles[key] = np.zeros((len(self._WEIGHT_GRID), 2))
            else:
                pivot = (plug_error[usable][None, :] + self._WEIGHT_GRID[:, None] * step[usable][None, :]) / scale[usable]
                self._quantiles[key] = np.quantile(pivot, [alpha / 2, 1 - alpha / 2], axis=1).T
        return self._quantiles[key]


def normal_reference(m: int, tail_fraction: float) -> NormalReference:
    """The reference of size m; above 24 the nearest size on a 10% geometric grid stands in (what
    the reference gives changes by far less than its simulation noise between neighbours)."""
    return _reference_of_size(_REFERENCE_SIZES[np.abs(np.log(_REFERENCE_SIZES / m)).argmin()] if m > 24 else m,
                              tail_fraction)


_REFERENCE_SIZES = np.unique(np.round(24 * 1.1 ** np.arange(60)).astype(int))


@functools.lru_cache(maxsize=256)
def _reference_of_size(m: int, tail_fraction: float) -> NormalReference:
    return NormalReference(int(m), tail_fraction)

