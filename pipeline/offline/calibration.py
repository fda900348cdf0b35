"""How well best-of-n is predicted from m samples: the predictor, the paper's tail fit and the
plug-in against exact values, on finite reward pools and on simulated worlds.

Pure numpy (matplotlib only inside the plotting functions). A pool is one prompt's responses in
the real data of ``data/real``, one state of a reward bank, or one state of a simulated world. For
each pool, ``repeats`` samples of m rewards are drawn (with replacement), ``pipeline.stats.predict``
predicts V_n from each, and the prediction is compared with the pool's exact E[max of n]
(``pipeline.stats.pool``; a world state's own value for worlds). Errors are in units of the pool's
standard deviation, so reward scales compare. The samples of one repeat form one batch, as a
user's file would (one group: they share the reward source). ``slg curves`` prints this report;
``pipeline.offline.plots`` draws it.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import ConfigError
from pipeline.offline.free_memory import check_free_memory
from pipeline.stats.pool import expected_max_of_pool
from pipeline.stats.predict import FLAGS, predict_rows

POOL_SIZE = "pool"  # n = the pool's own size (the real-data protocol of docs/prediction.md)
MODELS = ("predicted", "tail_fit", "plug_in")


class EmpiricalPool:
    """A finite pool of rewards: draws with replacement; the truth is the pool's exact E[max of n]."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=float)
        self.size, self.spread = self.values.size, float(self.values.std())
        self._truth: dict[int, float] = {}

    def draw(self, rng, repeats: int, m: int) -> np.ndarray:
        return rng.choice(self.values, size=(repeats, m))

    def truth(self, n: int) -> float:
        if n not in self._truth:
            self._truth[n] = expected_max_of_pool(self.values, n)
        return self._truth[n]


class WorldState:
    """One state of a simulated world: exact V_n from the world, draws from its reward distribution."""

    def __init__(self, world, latent: float, rng):
        self.world, self.latent = world, float(latent)
        reference, _ = world.sample_rewards(rng, np.full(4000, self.latent))
        self.size, self.spread = None, float(reference.std())

    def draw(self, rng, repeats: int, m: int) -> np.ndarray:
        return self.world.sample_rewards(rng, np.full((repeats, m), self.latent))[0]

    def truth(self, n: int) -> float:
        return float(self.world.state_value(np.array([self.latent]), n)[0])


def world_states(world, num_states: int, seed: int = 0) -> list[WorldState]:
    rng = np.random.default_rng([seed, 1])
    return [WorldState(world, latent, rng) for latent in world.sample_states(rng, (num_states,))]


# What calibrating holds in memory, at its peak (the largest m's samples and the predictions of every
# n): bytes per sample value, per (sample, n) and per sample, and per world state. Measured as the
# peak RSS of `/usr/bin/time -f %M slg curves --world gaussian --states S --repeats R --m M --n ...`
# at S x R = 200,000 and 400,000 samples: 34 bytes a value (m = 64, R from 100 to 200), 122 a (sample,
# n) (2 against 20 n), and 0.9 KB a world state (bimodal, 10 against 400,000 states); rounded up.
SAMPLE_VALUE_BYTES, SAMPLE_N_BYTES, SAMPLE_BYTES, WORLD_STATE_BYTES = 40, 128, 128, 1024


def check_fits_in_memory(num_pools: int, repeats: int, m_values: list[int], num_n: int, world_states: int = 0,
                         pools: str | None = None) -> None:
    """``ConfigError`` where calibrating ``num_pools`` pools (``world_states`` states drawn from worlds
    first) would not fit in free memory. ``pools``: how the message names them (``--states 1,000``),
    if not by their count."""
    samples = num_pools * repeats
    need = samples * (SAMPLE_VALUE_BYTES * max(m_values) + SAMPLE_N_BYTES * num_n + SAMPLE_BYTES) + WORLD_STATE_BYTES * world_states
    check_free_memory(need, f"{pools or f'{num_pools:,} pools'} x --repeats {repeats:,} samples of up to m = {max(m_values):,} "
                            f"rewards, predicted at {num_n:,} n,", "fewer states, repeats or m")


def calibrate(pools: list, m_values: list[int], n_values, repeats: int, seed: int = 0,
              upper_bound: float | None = None) -> dict:
    """Error summaries per (m, n) over all pools and repeats; see the module docstring.

    ``pools``: reward lists (exact pools) or objects with ``draw``, ``truth``, ``size`` and
    ``spread`` (``WorldState``); pools with no spread are left out (no scale for the error, and
    every method that honours ties predicts them exactly). ``n_values``: a list of n, or
    ``POOL_SIZE`` for each pool's own size. Per cell, for each of ``MODELS``: median and mean
    |error| / sd and the mean error / sd (bias); for the predictor also how often its 95%
    interval covers the truth, and for each flag the share of samples that raise it; with
    ``upper_bound``, the share of predictions or interval ends above it (``above_bound``).
    """
    if repeats < 1 or not m_values or min(m_values) < 1:
        raise ConfigError("calibrate needs repeats >= 1 and a non-empty list of m >= 1")
    per_pool_n = n_values == POOL_SIZE
    if not per_pool_n and (not n_values or min(n_values) < 1):
        raise ConfigError(f"n must be {POOL_SIZE!r} or a non-empty list of integers >= 1, got {n_values!r}")
    pools = [p if hasattr(p, "draw") else EmpiricalPool(p) for p in pools]
    pools = [p for p in pools if p.spread > 0]
    if not pools:
        raise ConfigError("no pool with any spread to calibrate on")
    if per_pool_n and any(p.size is None for p in pools):
        raise ConfigError(f"n = {POOL_SIZE!r} needs finite pools")
    columns = [POOL_SIZE] if per_pool_n else list(n_values)
    rng = np.random.default_rng(seed)
    spread = np.repeat([p.spread for p in pools], repeats)
    report = {"pools": len(pools), "repeats": repeats, "upper_bound": upper_bound, "cells": []}
    for m in m_values:
        rows = np.concatenate([p.draw(rng, repeats, m) for p in pools])          # pool-major
        n_table = (np.repeat([p.size for p in pools], repeats)[:, None] if per_pool_n
                   else np.broadcast_to(np.asarray(columns, dtype=float), (len(rows), len(columns))))
        result = predict_rows(rows, n_table, upper_bound, groups=np.tile(np.arange(repeats), len(pools)))
        truth = np.array([[p.truth(int(n)) for n in ([p.size] if per_pool_n else columns)] for p in pools])
        truth = np.repeat(truth, repeats, axis=0)
        for j, column in enumerate(columns):
            report["cells"].append(_cell(m, column, result, j, truth[:, j], spread, upper_bound))
    return report


def _cell(m, n, result, column, truth, spread, upper_bound) -> dict:
    cell = {"m": m, "n": n, "cases": int(len(truth))}
    for name in MODELS:
        error = (getattr(result, "value" if name == "predicted" else name)[:, column] - truth) / spread
        cell[name] = {"median_abs_error": float(np.median(np.abs(error))), "mean_abs_error": float(np.mean(np.abs(error))),
                      "bias": float(np.mean(error))}
    tolerance = 1e-9 * spread
    lower, upper = result.lower[:, column], result.upper[:, column]
    cell["interval_coverage"] = float(np.mean((lower <= truth + tolerance) & (truth <= upper + tolerance)))
    cell["flagged"] = {name: float(np.mean(result.flags >> bit & 1)) for bit, name in enumerate(FLAGS)}
    missed = ~((lower <= truth + tolerance) & (truth <= upper + tolerance))
    heavy = result.flags >> FLAGS.index("heavy_tail") & 1
    cell["heavy_tail_among_missed"] = float(heavy[missed].mean()) if missed.any() else None
    if upper_bound is not None:
        cell["above_bound"] = float(np.mean((result.value[:, column] > upper_bound) | (upper > upper_bound)
                                            | (lower > upper_bound)))
    return cell


def format_report(report: dict) -> str:
    """One block per source: per (m, n) the median and mean |error|/sd of the three models,
    the predictor's bias, its interval coverage, the share above the bound, and the share of
    missed truths whose sample was flagged heavy_tail."""
    lines = []
    for name, section in report.items():
        bound = section["upper_bound"]
        lines.append(f"{name}: {section['pools']} pools x {section['repeats']} samples"
                     + (f", rewards <= {bound}" if bound is not None else ""))
        lines.append(f"  {'m':>4} {'n':>5}  {'|err|/sd median: predicted':>26} {'tail fit':>8} {'plug-in':>8}"
                     f"   {'mean: predicted':>15} {'tail fit':>8} {'plug-in':>8} {'bias':>7} {'covered':>8} {'>bound':>7}"
                     f" {'heavy|missed':>12}")
        for c in section["cells"]:
            med = [c[k]["median_abs_error"] for k in MODELS]
            mean = [c[k]["mean_abs_error"] for k in MODELS]
            above = f"{c['above_bound']:.3f}" if "above_bound" in c else "-"
            heavy = "-" if c["heavy_tail_among_missed"] is None else f"{c['heavy_tail_among_missed']:.2f}"
            lines.append(f"  {c['m']:>4} {c['n']!s:>5}  {med[0]:>26.3f} {med[1]:>8.3f} {med[2]:>8.3f}   {mean[0]:>15.3f} "
                         f"{mean[1]:>8.3f} {mean[2]:>8.3f} {c['predicted']['bias']:>+7.3f} {c['interval_coverage']:>8.3f} {above:>7}"
                         f" {heavy:>12}")
    return "\n".join(lines)
