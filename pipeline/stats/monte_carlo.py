"""A Monte Carlo mean with its error, sharpened by a control variate whose expectation is known exactly.

Pure numpy. The paid-discovery ceiling (``pipeline.offline.ceilings``) averages simulated discoveries.
Each discovery's value moves with the best reward its prompt draws found, and that best's expectation
is best-of-N's exact value at the discovery's draws: subtracting ``beta`` times the control's deviation
from its expectation keeps the mean and removes the part of the noise the control explains (on the
toy models' banks the 95% interval of a bank's ceiling narrows by 1.3-1.7x at N = 32 and 2.3-4.5x at
256: toy_t8_temp07, toy_t12, toy_t8).
``beta`` is a least-squares slope, fitted on the other half of the draws (docs/method.md, "Ceilings").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class MonteCarloMean(NamedTuple):
    mean: float
    variance: float  # of the mean: its squared standard error (NaN where the draws are too few to tell)


def control_variate_mean(values: np.ndarray, control: np.ndarray, expected: float) -> MonteCarloMean:
    """The mean of ``values`` adjusted by ``control`` (one per value, with E[control] = ``expected``),
    cross-fitted: each half of the draws (alternate ones) is adjusted by the least-squares slope of the
    other half, so no draw's adjustment depends on its own noise (a slope fitted on all the draws is
    biased with it: by about a quarter of an estimate's sd on one state's best-of-64, where the value is
    convex in the best). The variance is the adjusted values' own over their count. A constant control, or
    fewer than four draws, adjusts nothing: the plain mean and its variance."""
    values, control = np.asarray(values, dtype=float), np.asarray(control, dtype=float)
    adjusted = values
    if values.size >= 4:
        halves = (slice(0, None, 2), slice(1, None, 2))
        slopes = [_slope(values[half], control[half]) for half in halves]
        adjusted = values.copy()
        for half, slope in zip(halves, reversed(slopes)):
            adjusted[half] -= slope * (control[half] - expected)
    variance = float(adjusted.var(ddof=1)) / adjusted.size if adjusted.size > 1 else float("nan")
    return MonteCarloMean(float(adjusted.mean()), variance)


def _slope(values: np.ndarray, control: np.ndarray) -> float:
    """The least-squares slope of ``values`` on ``control``; 0 where the control does not vary."""
    centred = control - control.mean()
    spread = float(centred @ centred)
    return float(centred @ (values - values.mean())) / spread if spread > 0 else 0.0
