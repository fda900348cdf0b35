"""Best-of-n prediction from a few rewards: a value, a 95% interval, the model used, and flags.

Pure numpy/scipy: the one predictor that ``slg predict`` and ``slg curves`` use, and the search
policies report with (``search.reported_predictor``; they decide by the tail fit). It is not the
tail fit itself (``pipeline.stats.tail`` keeps the paper's estimator, one model here) and knows nothing
about prompts, states or engines: it turns rows of rewards into predicted ``V_n = E[max of n
rewards]``.

For a sample of m rewards the prediction is a weighted step from the sample towards a normal tail:

    V_hat_n = P_n + w (X_n - P_n),   w = w_normal(m, n) * c

- ``P_n`` (plug-in): the exact best-of-n of the sample's own empirical distribution. It honours
  ties, discrete levels and mass at a bound, and never exceeds the sample maximum.
- ``X_n`` (tail extension): the sample below its maximum, the paper's normal tail fit above it
  (``pipeline.stats.tail.fit_tail_rows``), the chance of a draw above the maximum being the fitted
  survival there. With a known upper bound B the extension is cut at B (E[min(max, B)]), so
  nothing is predicted above B.
- ``w_normal(m, n)``: the weight that minimises the mean squared error of V_hat_n for normal
  rewards, a property of m and n only (the predictor is location-scale equivariant), computed once
  per m by a seeded simulation: small when n <= m (the sample already shows what best-of-n
  reaches), 0.6-0.95 when n >> m.
- ``c`` in [0, 1]: the evidence that the reward is continuous. A continuous reward never repeats
  a value; a reward with few levels (pass rates, verdicts, quantised scores, a small pool of
  distinct answers) does, and its best-of-n stops at its top level. From the Good-Turing share U
  of values seen once among the interior values (above the row minimum, below B), the richness
  alpha = m U / (1 - U) (the concentration of a Dirichlet process with that share of new values)
  gives c = 1 / (1 + (ALPHA_CONTINUOUS / alpha)^4). Rows of one group (one reward source: a
  file, an episode's nodes) pool their counts; RICHNESS_PRIOR pseudo-singletons keep a sample
  continuous until its ties say otherwise. The two constants were chosen on the real data of
  data/real (README, "Prediction"), where they separate few-level rewards (HumanEval pass rates,
  alpha ~ 4) from continuous ones (PRM and GenRM scores, alpha >= 15).

The 95% interval blends two intervals by the same c. For a continuous reward: the pivot
(V_hat_n - V_n) / sigma of normal rewards (sigma: the tail fit's), whose quantiles depend on m, n
and w only and come from the same simulation. With a bound no reward of the row reaches, that pivot
is taken on y = -log(B - x), the distance to the bound on a log scale, where a reward saturating
towards B (a probability, a squashed score) has a normal tail, and mapped back with
E[B - exp(-Y_max)]: on x the interval of such rewards is far too wide at n = 100 and too narrow
at n = 1000. (The point stays on x: its error on the real rewards is lower.) For a few-level
reward: the top level's share between its Jeffreys bounds, and above it the larger of an unseen
level one top gap up (chance: the Jeffreys upper bound of an event never seen in m draws) and the
continuous interval's upper end. Every end is cut at B.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import special

from pipeline.errors import ConfigError
from pipeline.stats.tail import DEFAULT_TAIL_FRACTION, expected_max_std_normal, fit_tail_rows

DEFAULT_CONFIDENCE = 0.95
ALPHA_CONTINUOUS = 10.0   # richness at which c = 1/2
RICHNESS_PRIOR = 8.0      # pseudo-singletons added to every group's counts
HEAVY_GROUP_Z = 3.09      # one-sided p = 0.001 for a group's pooled kurtosis
_REFERENCE_SAMPLES = 3000  # normal samples per m behind w_normal, the pivot and the kurtosis reference
_CHUNK_ROWS = 4096         # rows per vectorised block (memory grows as rows x k x nodes)
_SQRT_HALF = np.sqrt(0.5)
_LARGEST_N = 2 ** 53       # n is computed with as a float
_NODES = 49                # Simpson nodes of the tail integral (error below 2e-5 sigma for n <= 10^4)

FLAGS = ("constant", "ties", "few_distinct", "mass_at_bound", "heavy_tail", "at_bound")
FLAG_RULES = {
    "constant": "every reward has the same value",
    "ties": "a value above the row minimum and below the bound occurs more than once",
    "few_distinct": "at most max(2, m/4) distinct values",
    "mass_at_bound": "at least one reward equals the upper bound",
    "heavy_tail": "the upper half's kurtosis about the median is above its 99% point for m normal rewards, "
                  "or its group's mean standardised value is more than 3.09 standard errors above normal "
                  "(counted on rows of m >= 8 without ties, bound or few distinct values)",
    "at_bound": "a predicted value is within 1e-9 of the upper bound",
}


@dataclass(frozen=True)
class Predictions:
    """Predictions for B rows at k values of n; arrays are (B, k) unless said otherwise.

    ``value``, ``lower``, ``upper``: V_hat_n and its interval. ``plug_in``: the sample's exact
    best-of-n. ``tail_fit``: the paper's mu + sigma E(n), capped at the bound. ``weight``: w (0:
    plug-in, w_normal: full extension). ``continuity``: c, (B,). ``flags``: (B,) bit masks over
    ``FLAGS``. ``n``: (B, k).
    """

    n: np.ndarray
    value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    plug_in: np.ndarray
    tail_fit: np.ndarray
    weight: np.ndarray
    continuity: np.ndarray
    flags: np.ndarray

    def flag_names(self, row: int) -> list[str]:
        return [name for bit, name in enumerate(FLAGS) if int(self.flags[row]) >> bit & 1]

    def model(self, row: int, column: int) -> str:
        """``constant``; ``plug-in`` (w < 0.05, or a reward at the bound: nothing lies above it);
        ``tail`` (c > 0.95: the normal-optimal step to the tail extension); else ``blend``."""
        flags = int(self.flags[row])
        if flags & 1:
            return "constant"
        if not self.weight[row, column] >= 0.05 or flags >> FLAGS.index("mass_at_bound") & 1:
            return "plug-in"
        return "tail" if self.continuity[row] > 0.95 else "blend"


def predict_best_of_n(rewards, n, upper_bound: float | None = None, **options) -> Predictions:
    """One reward vector at one or several n (``predict_rows`` on one row)."""
    values = np.asarray(rewards, dtype=float)
    if values.ndim != 1:
        raise ConfigError(f"rewards must be a 1-D list, got shape {values.shape}")
    return predict_rows(values[None, :], n, upper_bound, **options)


def predict_rows(rewards, n, upper_bound=None, groups=None, tail_fraction: float = DEFAULT_TAIL_FRACTION,
                 confidence: float = DEFAULT_CONFIDENCE, continuity=None, heavy=None) -> Predictions:
    """Predict best-of-n for every row of a (B, L) reward array; NaN marks an absent reward.

    ``n``: an int or a sequence of k ints shared by all rows, or a (B, k) array (n per row).
    ``upper_bound``: None, a float, or a (B,) array (NaN: no bound for that row).
    ``groups``: None (every row alone) or (B,) labels; the rows of a group pool their tie counts
    (continuity) and their kurtosis (heavy-tail flag): one group per reward source.
    ``continuity`` (B,) and ``heavy`` ((B,) bools or flag masks) reuse those of an earlier call
    on a larger batch (e.g. more n for a few rows) instead of pooling again.
    A row without rewards predicts NaN. Raises ``ConfigError`` for infinite rewards, n < 1, a
    bound below a reward, or a confidence outside (0, 1).
    """
    rewards = np.asarray(rewards, dtype=float)
    if rewards.ndim != 2:
        raise ConfigError(f"rewards must be a (rows, length) array, got shape {rewards.shape}")
    if np.isinf(rewards).any():
        raise ConfigError("rewards contain an infinite value")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    batch = rewards.shape[0]
    n_table = _n_table(n, batch)
    bound = _bound_array(upper_bound, batch)
    largest = np.max(np.where(np.isnan(rewards), -np.inf, rewards), axis=1, initial=-np.inf)
    above = largest > bound
    if above.any():
        row = int(np.argmax(above))
        raise ConfigError(f"upper bound {bound[row]!r} is below a reward ({largest[row]!r}) in row {row}")
    labels = np.arange(batch) if groups is None else np.asarray(groups)
    if labels.shape != (batch,):
        raise ConfigError(f"groups must have one label per row ({batch}), got shape {labels.shape}")
    blocks = [(_Rows(rewards[s], bound[s]), s) for s in _blocks(batch)]
    stats = [_row_statistics(rows, tail_fraction) for rows, _ in blocks]
    pooled = {key: np.concatenate([st[key] for st in stats]) for key in stats[0]} if stats else {}
    if continuity is None:
        continuity = continuity_rows(pooled["singles"], pooled["interior"], pooled["counts"], labels) if stats else np.zeros(0)
    if heavy is None:
        heavy = _heavy_rows(pooled["kurtosis_z"], pooled["kurtosis_row"], labels) if stats else np.zeros(0, dtype=bool)
    else:
        heavy = np.asarray(heavy)
        heavy = heavy >> FLAGS.index("heavy_tail") & 1 > 0 if heavy.dtype.kind in "iu" else heavy.astype(bool)
    continuity = np.asarray(continuity, dtype=float)
    parts = [_predict_block(rows, n_table[s], continuity[s], heavy[s], tail_fraction, confidence) for rows, s in blocks]
    if not parts:
        empty = np.zeros((0, n_table.shape[1]))
        return Predictions(n_table, empty, empty, empty, empty, empty, empty, np.zeros(0), np.zeros(0, dtype=np.int64))
    fields = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return Predictions(n=n_table, continuity=continuity, **fields)


class NodePredictions(NamedTuple):
    """``predict_node_values``'s result, each (B, nodes); NaN where a node has no rewards."""

    value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    flags: np.ndarray


def predict_node_values(samples: np.ndarray, n, upper_bound: float | None = None, pool_episode: bool = True,
                        tail_fraction: float = DEFAULT_TAIL_FRACTION) -> NodePredictions:
    """The policies' form: ``samples`` (B, nodes, L) NaN-padded, ``n`` (B,), one n per episode.

    With ``pool_episode`` the nodes of one episode (one prompt, one reward model) pool their tie
    counts; episodes never share anything, so a result does not depend on the rest of the batch.
    """
    batch, nodes, length = samples.shape
    per_row = np.repeat(np.maximum(np.asarray(n).reshape(batch), 1), nodes)[:, None]
    groups = np.repeat(np.arange(batch), nodes) if pool_episode else None
    result = predict_rows(samples.reshape(batch * nodes, length), per_row, upper_bound, groups, tail_fraction)
    shape = (batch, nodes)
    return NodePredictions(result.value[:, 0].reshape(shape), result.lower[:, 0].reshape(shape),
                           result.upper[:, 0].reshape(shape), result.flags.reshape(shape))


# --- samples ---------------------------------------------------------------------------------

class _Rows:
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


def plug_in_rows(rows: _Rows, n_table: np.ndarray) -> np.ndarray:
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


_GRID, _WEIGHTS = _simpson_on_squares(_NODES)


def extension_rows(rows: _Rows, n_table, mu, sigma, log_scale=None, sums_fit=None, sums=None):
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
    t = t_hi[:, None] * _GRID[None, :]
    # pi S(z+t)/S(z) through erfcx (S(x) = erfcx(x/sqrt 2) exp(-x^2/2)/2): no underflow far out.
    ratio = special.erfcx((z_top[:, None] + t) * _SQRT_HALF) / special.erfcx(z_top * _SQRT_HALF)[:, None]
    exceed = np.minimum(pi[:, None] * ratio * np.exp(-t * (z_top[:, None] + t / 2)), 1.0 - 1e-16)
    above = -np.expm1(n_live[:, :, None] * np.log1p(-exceed)[:, None, :])  # 1 - F^n on the grid
    body_fit = np.where(log_live[:, None], sums_fit[live], sums[live])
    fitted[live] = fit_top[live][:, None] - keep * body_fit + (above @ _WEIGHTS) * (t_hi * scale)[:, None]
    jacobian = np.where(log_live[:, None], np.exp(-scale[:, None] * t), 1.0) * _WEIGHTS[None, :]
    factor = np.where(log_live, (rows.bound[live] - rows.top[live]) * scale * t_hi, scale * t_hi)
    reward[live] = rows.top[live][:, None] - keep * sums[live] + np.einsum("bkg,bg->bk", above, jacobian) * factor[:, None]
    return reward, fitted


# --- continuity, heavy tails -------------------------------------------------------------------

def _row_statistics(rows: _Rows, tail_fraction: float) -> dict:
    """What rows pool by group: interior singletons and values (rows at the bound count nothing:
    nothing is extrapolated there), and the standardised upper-half kurtosis."""
    counted = (rows.counts > 0) & (rows.top < rows.bound)
    kurtosis = _upper_kurtosis(rows)
    sizes = np.unique(rows.counts)
    references = [_reference(int(m), tail_fraction) if m >= 8 else None for m in sizes]
    where = np.searchsorted(sizes, rows.counts)
    mean = np.array([r.kurtosis_mean if r else np.nan for r in references])[where]
    spread = np.array([r.kurtosis_sd if r else np.nan for r in references])[where]
    limit = np.array([r.kurtosis_limit if r else np.inf for r in references])[where]
    return {"singles": np.where(counted, (rows.singleton & rows.interior).sum(axis=1), 0),
            "interior": np.where(counted, rows.interior.sum(axis=1), 0), "counts": rows.counts,
            "kurtosis_z": (kurtosis - mean) / spread, "kurtosis_row": kurtosis > limit}


def continuity_rows(singles, interior, counts, groups) -> np.ndarray:
    """c per row, from ties among interior values pooled by group: U = (singletons + prior) /
    (interior values + prior), alpha = m U / (1 - U), c = 1 / (1 + (ALPHA_CONTINUOUS / alpha)^4)."""
    labels, index = np.unique(groups, return_inverse=True)
    share = ((np.bincount(index, singles, len(labels)) + RICHNESS_PRIOR)
             / (np.bincount(index, interior, len(labels)) + RICHNESS_PRIOR))[index]
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(share < 1.0, np.maximum(counts, 1) * share / (1.0 - share), np.inf)
        return np.where(np.isinf(alpha), 1.0, 1.0 / (1.0 + (ALPHA_CONTINUOUS / alpha) ** 4))


def _heavy_rows(kurtosis_z, kurtosis_row, groups) -> np.ndarray:
    """A row's upper-half kurtosis beyond its normal 99% point, or its group's mean standardised
    value beyond HEAVY_GROUP_Z standard errors (a reward source's tail shape is shared)."""
    labels, index = np.unique(groups, return_inverse=True)
    known = np.isfinite(kurtosis_z)
    total = np.bincount(index, np.where(known, kurtosis_z, 0.0), len(labels))
    count = np.bincount(index, known, len(labels))
    with np.errstate(divide="ignore", invalid="ignore"):
        group_z = np.where(count > 1, total / np.sqrt(count), 0.0)
    return kurtosis_row | (group_z[index] > HEAVY_GROUP_Z)


def _upper_kurtosis(rows: _Rows) -> np.ndarray:
    """Kurtosis of the upper half about the median, mean(d^4) / mean(d^2)^2 with d = x - median
    over the top m - m//2 rewards: how far the top reaches relative to the upper half's spread.
    NaN where it says nothing about a continuous tail: m < 8, ties, few distinct values, a bound."""
    m = rows.counts
    middle = np.take_along_axis(rows.ordered, (m // 2)[:, None], axis=1)
    upper = rows.valid & (np.arange(rows.ordered.shape[1])[None, :] >= (m // 2)[:, None])
    d = np.where(upper, rows.ordered - middle, 0.0)
    size = np.maximum(upper.sum(axis=1), 1)
    second, fourth = (d ** 2).sum(axis=1) / size, (d ** 4).sum(axis=1) / size
    usable = ((m >= 8) & (second > 0) & ~(rows.interior & ~rows.singleton).any(axis=1)
              & (rows.distinct > np.maximum(2, m / 4)) & (rows.top < rows.bound))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(usable, fourth / np.where(second > 0, second, 1.0) ** 2, np.nan)


# --- one block of rows -----------------------------------------------------------------------

def _predict_block(rows: _Rows, n_table, continuity, heavy, tail_fraction, confidence) -> dict:
    mu, sigma, _, _ = fit_tail_rows(rows.ordered, tail_fraction)  # the paper's fit (the order does not matter)
    e_n = _expected_max_table(n_table)
    ceiling = rows.bound[:, None]
    tail_fit = np.minimum(mu[:, None] + sigma[:, None] * e_n, ceiling)
    sums = rows.power_sums(n_table)
    plug_in = rows.top[:, None] - sums
    extension, _ = extension_rows(rows, n_table, mu, sigma, None, sums, sums)
    alpha = 1.0 - confidence
    weight_normal, pivot_low, pivot_high = _reference_lookup(rows.counts, n_table, continuity, tail_fraction, alpha)
    weight = weight_normal * continuity[:, None]
    value = np.minimum(plug_in + weight * (extension - plug_in), ceiling)
    # A continuous reward's interval: the normal pivot on the scale of the fit. On log rows (a
    # bound no reward reaches) that is y = -log(B - x), where a reward saturating towards B has a
    # normal tail (the point above stays on x: the lower error on real rewards).
    fit_mu, fit_sigma, plug_fit, extension_fit = mu, sigma, plug_in, extension
    if rows.log_rows.any():
        log = rows.log_rows
        fit_mu, fit_sigma = mu.copy(), sigma.copy()
        fit_mu[log], fit_sigma[log], _, _ = fit_tail_rows(rows.model[log], tail_fraction)
        sums_fit = np.where(log[:, None], rows.power_sums(n_table, rows.model_gaps), sums)
        plug_fit = np.where(log[:, None], rows.model_top[:, None] - sums_fit, plug_in)
        extension_fit = extension.copy()
        subset = _Rows(rows.ordered[log], rows.bound[log])
        extension_fit[log] = extension_rows(subset, n_table[log], fit_mu[log], fit_sigma[log], np.ones(int(log.sum()), bool),
                                            sums_fit[log], sums[log])[1]
    spread = fit_sigma[:, None]
    centre = plug_fit + weight * (extension_fit - plug_fit)
    normal_lower = _to_reward(rows, centre - pivot_high * spread, fit_sigma, n_table)
    normal_upper = _to_reward(rows, centre - pivot_low * spread, fit_sigma, n_table)
    # A few-level reward: the levels' interval, its top raised to what the full extension allows.
    full_low = _reference_lookup(rows.counts, n_table, np.ones(len(continuity)), tail_fraction, alpha)[1]
    full_centre = plug_fit + weight_normal * (extension_fit - plug_fit)
    full_upper = _to_reward(rows, full_centre - full_low * spread, fit_sigma, n_table)
    level_lower, level_upper = _level_interval(rows, n_table, plug_in, alpha)
    level_upper = np.maximum(level_upper, np.where(spread > 0, full_upper, level_upper))
    # At the bound or with a degenerate tail fit only the levels' interval applies; c within 0.01
    # of 0 or 1 counts as 0 or 1, so that a clear case keeps its own ends (one at B stays at B).
    c = np.clip((np.where((rows.top < rows.bound) & (fit_sigma > 0), continuity, 0.0) - 0.01) / 0.98, 0.0, 1.0)[:, None]
    # V_n >= V_1 = E[reward], which a sample's minimum all but never exceeds: the floor of the lower end.
    lower = np.minimum(np.maximum(c * normal_lower + (1 - c) * level_lower, rows.ordered[:, :1]), value)
    upper = np.minimum(np.maximum(c * normal_upper + (1 - c) * level_upper, value), ceiling)
    flags = _flags(rows, value, heavy)
    empty = (rows.counts == 0)[:, None]
    return {"value": np.where(empty, np.nan, value), "lower": np.where(empty, np.nan, lower),
            "upper": np.where(empty, np.nan, upper), "plug_in": np.where(empty, np.nan, plug_in),
            "tail_fit": np.where(empty, np.nan, tail_fit), "weight": weight, "flags": flags}


def _to_reward(rows: _Rows, model_value, sigma, n_table):
    """Model-scale best-of-n to rewards: identity, or on log rows E[B - exp(-Y_max)] =
    B - exp(-v) E[exp(-sigma (Z_n - E(n)))] for the normal Y whose E[Y_max] is v."""
    out = model_value.copy()
    if rows.log_rows.any():
        log = rows.log_rows
        factor = _exp_moment(n_table[log], sigma[log])
        out[log] = rows.bound[log][:, None] - np.exp(-model_value[log]) * factor
    return out


def _level_interval(rows: _Rows, n_table, plug_in, alpha):
    """The plug-in's interval for a few-level reward: the top level's share between its Jeffreys
    bounds, and an unseen level one top gap above the top (a constant sample: at the bound, if
    there is one; capped at the bound) whose chance is the Jeffreys upper bound of an event never
    seen in m draws."""
    m = np.maximum(rows.counts, 1).astype(float)
    share = rows.at_top / m
    key = rows.at_top * (int(m.max(initial=1)) + 1) + rows.counts  # the bounds depend on (top count, m) only
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    hits, misses = rows.at_top[first] + 0.5, m[first] - rows.at_top[first] + 0.5
    share_low = special.betaincinv(hits, misses, alpha / 2)[inverse]
    share_high = special.betaincinv(hits, misses, 1 - alpha / 2)[inverse]
    unseen_high = special.betaincinv(0.5, m[first] + 0.5, 1 - alpha / 2)[inverse]

    def reach(p):  # the chance that n draws hit a level of per-draw probability p
        return -np.expm1(n_table * np.log1p(-np.clip(p, 0.0, 1.0 - 1e-16))[:, None])

    gap = rows.top_gap[:, None]
    lower = plug_in - gap * (reach(share) - reach(share_low))
    # One level step up (the last gap), or, for a constant sample, as far as the bound if known.
    step = np.minimum(np.where(rows.top_gap > 0, rows.top_gap, np.where(np.isfinite(rows.bound), np.inf, 0.0)),
                      rows.bound - rows.top)[:, None]
    upper = plug_in + gap * (reach(share_high) - reach(share)) + step * reach(unseen_high)
    return lower, upper


def _flags(rows: _Rows, value, heavy) -> np.ndarray:
    bits = {
        "constant": (rows.counts > 0) & (rows.distinct == 1),
        "ties": (rows.interior & ~rows.singleton).any(axis=1),
        "few_distinct": (rows.counts > 0) & (rows.distinct <= np.maximum(2, rows.counts / 4)),
        "mass_at_bound": (rows.valid & (rows.ordered >= rows.bound[:, None])).any(axis=1),
        "heavy_tail": heavy,
        "at_bound": np.isfinite(rows.bound) & (value >= rows.bound[:, None] - 1e-9).any(axis=1),
    }
    flags = np.zeros(len(rows.counts), dtype=np.int64)
    for bit, name in enumerate(FLAGS):
        flags |= bits[name].astype(np.int64) << bit
    return flags


# --- the normal reference: w_normal(m, n), pivot quantiles, kurtosis -------------------------

def _reference_lookup(counts, n_table, continuity, tail_fraction, alpha):
    """w_normal and the pivot quantiles per (row, column), vectorised per distinct m."""
    weight, low, high = np.zeros(n_table.shape), np.zeros(n_table.shape), np.zeros(n_table.shape)
    for m in np.unique(counts):
        if m < 2:
            continue
        rows = counts == m
        reference = _reference(int(m), tail_fraction)
        weight[rows] = reference.weights(n_table[rows])
        low[rows], high[rows] = reference.pivot_quantiles(n_table[rows], weight[rows] * continuity[rows, None], alpha)
    return weight, low, high


class _NormalReference:
    """Seeded standard-normal samples of size m and what the predictor does on them, per n.

    Pivotal for normal rewards (the predictor is location-scale equivariant on the model scale),
    so one simulation per m serves every row of that size. n lies on a grid of 8 points per
    doubling (interpolated in log n), a weight on a grid of 0.01.
    """

    _WEIGHT_GRID = np.linspace(0.0, 1.0, 101)

    def __init__(self, m: int, tail_fraction: float):
        sample = np.random.default_rng([m, 20260131]).standard_normal((_REFERENCE_SAMPLES, m))
        self.rows = _Rows(sample, np.full(_REFERENCE_SAMPLES, np.inf))
        self.mu, self.sigma, _, _ = fit_tail_rows(self.rows.ordered, tail_fraction)
        kurtosis = _upper_kurtosis(self.rows)
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


def _reference(m: int, tail_fraction: float) -> _NormalReference:
    """The reference of size m; above 24 the nearest size on a 10% geometric grid stands in (what
    the reference gives changes by far less than its simulation noise between neighbours)."""
    return _reference_of_size(_REFERENCE_SIZES[np.abs(np.log(_REFERENCE_SIZES / m)).argmin()] if m > 24 else m,
                              tail_fraction)


_REFERENCE_SIZES = np.unique(np.round(24 * 1.1 ** np.arange(60)).astype(int))


@functools.lru_cache(maxsize=256)
def _reference_of_size(m: int, tail_fraction: float) -> _NormalReference:
    return _NormalReference(int(m), tail_fraction)


# --- helpers ---------------------------------------------------------------------------------

def _exp_moment(n_table, sigma):
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


def _expected_max_table(n_table):
    unique, inverse = np.unique(n_table, return_inverse=True)
    return np.array([expected_max_std_normal(int(k)) for k in unique])[inverse].reshape(n_table.shape)


def _n_table(n, batch: int) -> np.ndarray:
    """(B, k) float table: an int or a sequence is shared by every row; a 2-D array is per row."""
    array = np.asarray(n)
    if array.dtype.kind not in "iuf" or array.size == 0 or array.ndim > 2:
        raise ConfigError(f"n must be a positive integer or a list of them, got {n!r}")
    if array.ndim < 2:
        array = np.broadcast_to(array.reshape(1, -1), (batch, array.size))
    elif array.shape[0] != batch:
        raise ConfigError(f"n has {array.shape[0]} rows for {batch} reward rows")
    bad = ~np.isfinite(array) | (array < 1) | (array != np.round(array)) | (array > _LARGEST_N)
    if bad.any():
        raise ConfigError(f"n must be integers >= 1 (and at most 2^53, where floats stop counting), "
                          f"got {array[bad].ravel()[0].item()!r}")
    return array.astype(float)


def _bound_array(upper_bound, batch: int) -> np.ndarray:
    if upper_bound is None:
        return np.full(batch, np.inf)
    bound = np.array(np.broadcast_to(np.asarray(upper_bound, dtype=float), (batch,)))
    if np.isinf(bound).any():
        raise ConfigError("upper bound must be finite (omit it for an unbounded reward)")
    bound[np.isnan(bound)] = np.inf
    return bound


def _blocks(batch: int):
    return [slice(start, min(start + _CHUNK_ROWS, batch)) for start in range(0, batch, _CHUNK_ROWS)]
