"""The two pieces of the predictor's 95% interval that are not the normal pivot: the few-level
interval of a sample's plug-in, and the interval of a mixture of two models (the continuous and the
few-level one, weighted by the evidence for each). Pure numpy/scipy; ``pipeline.stats.predict``
assembles them."""

from __future__ import annotations

import numpy as np
from scipy import special

from pipeline.stats.sample_rows import SampleRows

_BISECTION_STEPS = 40  # a mixture interval's end to 2^-40 of the gap between the models' ends


def level_interval(rows: SampleRows, n_table, plug_in, alpha):
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


def mixture_interval(weight, first, second, alpha: float):
    """The central 1 - alpha interval of the mixture ``weight`` A + (1 - ``weight``) B, each model
    given as (lower, point, upper) arrays: its own 1 - alpha interval, read as a split normal about
    the point (one scale each side; a side of zero width is a point mass). A point outside its
    interval (a pivot whose quantiles share a sign) is read as the interval's midpoint, so that the
    model keeps alpha/2 beyond each end. Each end lies between the two models' ends, where
    bisection finds the mixture's CDF crossing alpha/2 or 1 - alpha/2; only cells of a weight
    strictly between 0 and 1 are bisected, the others keep one model's ends exactly."""
    shape = np.shape(first[0])
    weight = np.broadcast_to(weight, shape)
    lower, upper = np.where(weight >= 1, first[0], second[0]), np.where(weight >= 1, first[2], second[2])
    mixed = (weight > 0) & (weight < 1)
    if not mixed.any():
        return lower, upper
    weight = weight[mixed]
    first, second = (tuple(np.broadcast_to(part, shape)[mixed] for part in model) for model in (first, second))
    shapes = [_split_normal(model, alpha) for model in (first, second)]

    def mixture_cdf(x):
        return weight * _split_normal_cdf(x, *shapes[0]) + (1 - weight) * _split_normal_cdf(x, *shapes[1])

    for target, side, out in ((alpha / 2, 0, lower), (1.0 - alpha / 2, 2, upper)):
        below, above = np.minimum(first[side], second[side]), np.maximum(first[side], second[side])
        for _ in range(_BISECTION_STEPS):
            middle = 0.5 * (below + above)
            short = mixture_cdf(middle) < target
            below, above = np.where(short, middle, below), np.where(short, above, middle)
        out[mixed] = 0.5 * (below + above)
    return lower, upper


def _split_normal(model, alpha: float):
    """(point, scale below, scale above) of the split normal whose central 1 - alpha interval is the
    model's (lower, upper); a point outside that interval is taken at its midpoint."""
    low, point, high = model
    point = np.where((point < low) | (point > high), 0.5 * (low + high), point)
    z = special.ndtri(1.0 - alpha / 2)
    return point, (point - low) / z, (high - point) / z


def _split_normal_cdf(x, point, scale_below, scale_above):
    scale = np.where(x < point, scale_below, scale_above)  # a side of zero width is a point mass
    with np.errstate(divide="ignore", invalid="ignore"):
        return special.ndtr(np.where(scale > 0, (x - point) / scale, np.where(x < point, -np.inf, np.inf)))
