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
  data/real (docs/prediction.md), where they separate few-level rewards (HumanEval pass rates,
  alpha ~ 4) from continuous ones (PRM and GenRM scores, alpha >= 15).

The 95% interval is that of the mixture of two models' predictive distributions (each model's
interval read as a split normal about its point): the continuous one with weight c (1 - t), the
few-level one with the rest, t being the chance that the row's top is a level. A continuous reward
never ties its maximum, so t = 1 where the row's maximum is tied; elsewhere t is its group's share
of tied maxima among open rows (two distinct values or more, the maximum below the bound). Real
generators repeat their likeliest answers exactly, so a pool's top is often a level even when its
other values are all distinct, and best-of-n stops there. A mixture's ends follow the model whose
tail reaches further; averaging the two models' ends by c put the lower end above the top of such
pools (the 95% interval covered 52-77% on six of the toy banks in `slg curves`). The point is the
same either way.

For a continuous reward, the interval is that of the pivot (V_hat_n - V_n) / sigma of normal
rewards (sigma: the tail fit's), whose quantiles depend on m, n and w only and come from the same
simulation. With a bound no reward of the row reaches, that pivot
is taken on y = -log(B - x), the distance to the bound on a log scale, where a reward saturating
towards B (a probability, a squashed score) has a normal tail, and mapped back with
E[B - exp(-Y_max)]: on x the interval of such rewards is far too wide at n = 100 and too narrow
at n = 1000. (The point stays on x: its error on the real rewards is lower.) For a few-level
reward: the top level's share between its Jeffreys bounds, and above it the larger of an unseen
level one top gap up (chance: the Jeffreys upper bound of an event never seen in m draws) and the
continuous interval's upper end. Every end is cut at B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pipeline.errors import ConfigError
from pipeline.stats.intervals import level_interval, mixture_interval
from pipeline.stats.normal_reference import normal_reference, reference_lookup
from pipeline.stats.sample_rows import SampleRows, exp_moment, expected_max_table, extension_rows, upper_kurtosis
from pipeline.stats.tail import DEFAULT_TAIL_FRACTION, fit_tail_rows

DEFAULT_CONFIDENCE = 0.95
ALPHA_CONTINUOUS = 10.0   # richness at which c = 1/2
RICHNESS_PRIOR = 8.0      # pseudo-singletons added to every group's counts
HEAVY_GROUP_Z = 3.09      # one-sided p = 0.001 for a group's pooled kurtosis
_CHUNK_ROWS = 4096         # rows per vectorised block (memory grows as rows x k x nodes)
_LARGEST_N = 2 ** 53       # n is computed with as a float

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
    best-of-n. ``tail_fit``: the paper's mu + sigma E(n), capped at the bound. ``extension``: the
    tail extension X_n, the sample below its maximum and the tail fit above it. ``weight``: w (0:
    plug-in, w_normal: full extension): ``value`` is plug_in + w (extension - plug_in), capped at the
    bound. ``continuity``: c, (B,). ``top_level``: the chance that a row's top is a level, (B,):
    1 where its maximum is tied, else its group's share of tied maxima among open rows
    (``top_level_rows``; the interval gives the continuous model c (1 - top_level)). ``flags``:
    (B,) bit masks over ``FLAGS``. ``n``: (B, k).
    """

    n: np.ndarray
    value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    plug_in: np.ndarray
    tail_fit: np.ndarray
    extension: np.ndarray
    weight: np.ndarray
    continuity: np.ndarray
    top_level: np.ndarray
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
                 confidence: float = DEFAULT_CONFIDENCE, continuity=None, heavy=None, top_level=None) -> Predictions:
    """Predict best-of-n for every row of a (B, L) reward array; NaN marks an absent reward.

    ``n``: an int or a sequence of k ints shared by all rows, or a (B, k) array (n per row).
    ``upper_bound``: None, a float, or a (B,) array (NaN: no bound for that row).
    ``groups``: None (every row alone) or (B,) labels; the rows of a group pool their tie counts
    (continuity), their kurtosis (heavy-tail flag) and their tied maxima (``top_level``): one
    group per reward source. ``continuity``, ``top_level`` (B,) and ``heavy`` ((B,) bools or flag
    masks) reuse those of an earlier call on a larger batch (e.g. more n for a few rows) instead of
    pooling again.
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
    blocks = [(SampleRows(rewards[s], bound[s]), s) for s in _blocks(batch)]
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
    if top_level is None:
        top_level = top_level_rows(pooled["tied_top"], pooled["open_top"], labels) if stats else np.zeros(0)
    top_level = np.asarray(top_level, dtype=float)
    parts = [_predict_block(rows, n_table[s], continuity[s], top_level[s], heavy[s], tail_fraction, confidence)
             for rows, s in blocks]
    if not parts:
        empty = np.zeros((0, n_table.shape[1]))
        return Predictions(n_table, empty, empty, empty, empty, empty, empty, empty, np.zeros(0), np.zeros(0),
                           np.zeros(0, dtype=np.int64))
    fields = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return Predictions(n=n_table, continuity=continuity, top_level=top_level, **fields)


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


# --- continuity, heavy tails -------------------------------------------------------------------

def _row_statistics(rows: SampleRows, tail_fraction: float) -> dict:
    """What rows pool by group: interior singletons and values (rows at the bound count nothing:
    nothing is extrapolated there), and the standardised upper-half kurtosis."""
    counted = (rows.counts > 0) & (rows.top < rows.bound)
    kurtosis = upper_kurtosis(rows)
    sizes = np.unique(rows.counts)
    references = [normal_reference(int(m), tail_fraction) if m >= 8 else None for m in sizes]
    where = np.searchsorted(sizes, rows.counts)
    mean = np.array([r.kurtosis_mean if r else np.nan for r in references])[where]
    spread = np.array([r.kurtosis_sd if r else np.nan for r in references])[where]
    limit = np.array([r.kurtosis_limit if r else np.inf for r in references])[where]
    return {"singles": np.where(counted, (rows.singleton & rows.interior).sum(axis=1), 0),
            "interior": np.where(counted, rows.interior.sum(axis=1), 0), "counts": rows.counts,
            "kurtosis_z": (kurtosis - mean) / spread, "kurtosis_row": kurtosis > limit,
            "tied_top": rows.at_top >= 2, "open_top": (rows.distinct >= 2) & (rows.top < rows.bound)}


def continuity_rows(singles, interior, counts, groups) -> np.ndarray:
    """c per row, from ties among interior values pooled by group: U = (singletons + prior) /
    (interior values + prior), alpha = m U / (1 - U), c = 1 / (1 + (ALPHA_CONTINUOUS / alpha)^4)."""
    labels, index = np.unique(groups, return_inverse=True)
    share = ((np.bincount(index, singles, len(labels)) + RICHNESS_PRIOR)
             / (np.bincount(index, interior, len(labels)) + RICHNESS_PRIOR))[index]
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(share < 1.0, np.maximum(counts, 1) * share / (1.0 - share), np.inf)
        return np.where(np.isinf(alpha), 1.0, 1.0 / (1.0 + (ALPHA_CONTINUOUS / alpha) ** 4))


def top_level_rows(tied_top, open_top, groups) -> np.ndarray:
    """The chance that a row's top is a level: 1 where its maximum is tied (a continuous reward
    never ties), else the share of tied maxima among its group's open rows (two distinct values or
    more, the maximum below the bound: a constant row and mass at a bound have their own rules and
    say nothing here)."""
    tied, counted = np.asarray(tied_top, dtype=bool), np.asarray(open_top, dtype=bool)
    labels, index = np.unique(groups, return_inverse=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.nan_to_num(np.bincount(index, tied & counted, len(labels)) / np.bincount(index, counted, len(labels)))
    return np.where(tied, 1.0, share[index])


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


# --- one block of rows -----------------------------------------------------------------------

def _predict_block(rows: SampleRows, n_table, continuity, top_level, heavy, tail_fraction, confidence) -> dict:
    mu, sigma, _, _ = fit_tail_rows(rows.ordered, tail_fraction)  # the paper's fit (the order does not matter)
    e_n = expected_max_table(n_table)
    ceiling = rows.bound[:, None]
    tail_fit = np.minimum(mu[:, None] + sigma[:, None] * e_n, ceiling)
    sums = rows.power_sums(n_table)
    plug_in = rows.top[:, None] - sums
    extension, _ = extension_rows(rows, n_table, mu, sigma, None, sums, sums)
    alpha = 1.0 - confidence
    weight_normal, pivot_low, pivot_high = reference_lookup(rows.counts, n_table, continuity, tail_fraction, alpha)
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
        subset = SampleRows(rows.ordered[log], rows.bound[log])
        extension_fit[log] = extension_rows(subset, n_table[log], fit_mu[log], fit_sigma[log], np.ones(int(log.sum()), bool),
                                            sums_fit[log], sums[log])[1]
    spread = fit_sigma[:, None]
    centre = plug_fit + weight * (extension_fit - plug_fit)
    normal_lower = _to_reward(rows, centre - pivot_high * spread, fit_sigma, n_table)
    normal_upper = _to_reward(rows, centre - pivot_low * spread, fit_sigma, n_table)
    # A few-level reward: the levels' interval, its top raised to what the full extension allows.
    full_low = reference_lookup(rows.counts, n_table, np.ones(len(continuity)), tail_fraction, alpha)[1]
    full_centre = plug_fit + weight_normal * (extension_fit - plug_fit)
    full_upper = _to_reward(rows, full_centre - full_low * spread, fit_sigma, n_table)
    level_lower, level_upper = level_interval(rows, n_table, plug_in, alpha)
    level_upper = np.maximum(level_upper, np.where(spread > 0, full_upper, level_upper))
    # The interval's weight of the continuous model: c (1 - t), t the chance that the top is a level.
    # At the bound or with a degenerate tail fit only the levels' interval applies; a weight within
    # 0.01 of 0 or 1 counts as 0 or 1, so that a clear case keeps its own ends (one at B stays at B).
    continuous = np.where((rows.top < rows.bound) & (fit_sigma > 0), continuity * (1.0 - top_level), 0.0)
    c = np.clip((continuous - 0.01) / 0.98, 0.0, 1.0)
    normal_point = _to_reward(rows, centre, fit_sigma, n_table)
    mixed_lower, mixed_upper = mixture_interval(c[:, None], (normal_lower, normal_point, normal_upper),
                                                (level_lower, plug_in, level_upper), alpha)
    # V_n >= V_1 = E[reward], which a sample's minimum all but never exceeds: the floor of the lower end.
    lower = np.minimum(np.maximum(mixed_lower, rows.ordered[:, :1]), value)
    upper = np.minimum(np.maximum(mixed_upper, value), ceiling)
    flags = _flags(rows, value, heavy)
    empty = (rows.counts == 0)[:, None]
    return {"value": np.where(empty, np.nan, value), "lower": np.where(empty, np.nan, lower),
            "upper": np.where(empty, np.nan, upper), "plug_in": np.where(empty, np.nan, plug_in),
            "tail_fit": np.where(empty, np.nan, tail_fit), "extension": np.where(empty, np.nan, extension),
            "weight": weight, "flags": flags}


def _to_reward(rows: SampleRows, model_value, sigma, n_table):
    """Model-scale best-of-n to rewards: identity, or on log rows E[B - exp(-Y_max)] =
    B - exp(-v) E[exp(-sigma (Z_n - E(n)))] for the normal Y whose E[Y_max] is v."""
    out = model_value.copy()
    if rows.log_rows.any():
        log = rows.log_rows
        factor = exp_moment(n_table[log], sigma[log])
        out[log] = rows.bound[log][:, None] - np.exp(-model_value[log]) * factor
    return out


def _flags(rows: SampleRows, value, heavy) -> np.ndarray:
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
