"""Expected maxima of continuous distributions, for the simulated worlds' exact ground truth.

Pure numpy/scipy: E[max of n] from a CDF by adaptive quadrature or on a grid, Gauss-Hermite nodes of
a normal, and the distribution of the maximum of n standard normals on a fine grid.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, special


def expected_max_from_cdf(log_cdf, quantile, n: int) -> float:
    """E[max of n] = int_0^hi (1 - F^n) dx - int_lo^0 F^n dx for a continuous F, by adaptive quadrature.

    [lo, hi] spans the quantiles 1e-13 and 1 - 1e-13 of the maximum (F^-1 of p^(1/n)); the mass
    outside changes the result by less than 1e-9 for the families here. The range is split at 0
    and at the maximum's quartiles so that ``quad`` sees where the mass lives.
    """
    probs = [1e-13, 1e-3, 0.25, 0.5, 0.75, 1 - 1e-3, 1 - 1e-13]
    points = sorted({0.0, *(float(quantile(math.exp(math.log(p) / n))) for p in probs)})

    def cdf_of_max(x: float) -> float:
        return math.exp(n * float(np.squeeze(log_cdf(x))))

    total = 0.0
    for lo, hi in zip(points[:-1], points[1:]):
        if hi <= 0:
            total -= integrate.quad(cdf_of_max, lo, hi, epsabs=1e-12, epsrel=1e-10, limit=200)[0]
        else:
            total += integrate.quad(lambda x: -math.expm1(n * float(np.squeeze(log_cdf(x)))), lo, hi,
                                    epsabs=1e-12, epsrel=1e-10, limit=200)[0]
    return total


def expected_max_on_grid(x: np.ndarray, log_cdf: np.ndarray, n: int) -> float:
    """E[max of n] = int_0^inf (1 - F^n) - int_-inf^0 F^n by the trapezoid rule on a fine grid x of F."""
    if not x[0] < 0 < x[-1]:
        raise ValueError("the grid must straddle 0")
    split = int(np.searchsorted(x, 0.0))
    if x[split] != 0.0:  # put 0 on the grid so that neither integral loses the cell around it
        x = np.insert(x, split, 0.0)
        log_cdf = np.insert(log_cdf, split, np.interp(0.0, x[[split - 1, split + 1]], log_cdf[[split - 1, split]]))
    upper = integrate.trapezoid(-np.expm1(n * log_cdf[split:]), x[split:])
    lower = integrate.trapezoid(np.exp(n * log_cdf[:split + 1]), x[:split + 1])
    return float(upper - lower)


def normal_quadrature(sigma: float, degree: int = 80):
    """Nodes and weights of E[f(X)], X ~ N(0, sigma^2) (Gauss-Hermite)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(degree)
    return sigma * nodes, weights / weights.sum()


_MAX_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def max_of_normals_grid(n: int):
    """A fine grid z and the probability mass of the max of n standard normals in each cell."""
    if n not in _MAX_GRIDS:
        edges = np.linspace(-9.0, 9.0, 6001)
        cdf_n = np.exp(n * special.log_ndtr(edges))
        mass = np.diff(cdf_n)
        _MAX_GRIDS[n] = (edges[:-1] + edges[1:]) / 2, mass / mass.sum()
    return _MAX_GRIDS[n]
