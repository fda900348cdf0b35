"""A Monte Carlo mean with its error, sharpened by a control variate whose expectation is known exactly.

Pure numpy. The paid-discovery ceiling (``pipeline.offline.ceilings``) averages simulated discoveries.
Beside each discovery's worth (the rest of the budget shared optimally) it computes what giving the
whole rest to the prompt would be worth after that same discovery; that control's expectation is
best-of-N's exact value at N, so the ceiling is best-of-N's value plus the mean gain of the optimal
share over the prompt alone. The gain moves far less from one discovery to the next than the worth
itself (on the toy models' bank toy_t8_temp07 the 95% interval of its ceiling narrows by 1.6x at
N = 32 and about 5x at 256), and it is never negative, so neither is the ceiling's
reading against best-of-N, even where 64 discoveries all miss a rare top reward (docs/method.md,
"Ceilings").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class MonteCarloMean(NamedTuple):
    mean: float
    variance: float  # of the mean: its squared standard error (NaN from a single draw)


def control_variate_mean(values: np.ndarray, control: np.ndarray, expected: float) -> MonteCarloMean:
    """E[values] as ``expected`` + the mean of ``values - control``, where ``control`` is drawn with each
    value and E[control] = ``expected`` exactly; the variance is that of the differences over their
    count. Unbiased whatever the control (its coefficient is fixed at 1, nothing is fitted); sharp where
    the control moves with the values."""
    differences = np.asarray(values, dtype=float) - np.asarray(control, dtype=float)
    variance = float(differences.var(ddof=1)) / differences.size if differences.size > 1 else float("nan")
    return MonteCarloMean(float(expected + differences.mean()), variance)
