"""Compute multipliers: how many times N best-of-N would need to match a result, on the exact BoN curve.

Pure Python over a curve. For a result with mean best reward m and 95% interval +-h at budget N,
the multiplier is n*/N, n* the smallest n with curve(n) >= m (to 1e-12, relative), searched in
[1, 1024 N], except where the curve says nothing at that scale:

- ``">1024"``: curve(1024 N) < m - h: BoN does not reach the result within the searched range;
- ``"saturated"``: curve(1024 N) lies within [m - h, m + h]: from where BoN's curve enters the
  interval it never leaves it, so every n from there to 1024 N matches the result. The curve is flat
  at this reward's scale (a saturated reward: best-of-n reaches the maximum), and no multiplier is
  identified; BoN measured against its own curve would otherwise read as a fraction of itself.

A bank's curve is evaluated in passes over the bank, many n at once, so the searches run in
lockstep and ask ``PROBES`` points each per pass (a (PROBES + 1)-ary search, in ratio while the
interval spans more than a factor PROBES + 1, then in length: about 9 passes for N = 1000 where a
bisection takes 21). The curve is monotone, so this finds the same n* as a bisection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MULTIPLIER_SEARCH_LIMIT = 1024  # the BoN budget searched for the multiplier, in units of N
SATURATED = "saturated"
PROBES = 3

CurveAt = Callable[[list[int]], dict[int, float]]  # n values -> the exact BoN value at each


@dataclass(frozen=True)
class Cell:
    """A result to find the multiplier of: its mean best reward, the half-width of its 95% interval, its budget."""

    mean: float
    ci95: float
    budget: int


def find_multipliers(curve_at: CurveAt, cells: list[Cell]) -> list[float | str]:
    """The multiplier of every cell (module docstring), evaluating the curve in as few passes as the search allows."""
    limits = [MULTIPLIER_SEARCH_LIMIT * cell.budget for cell in cells]
    top = curve_at(sorted(set(limits)))
    found: list[float | str | None] = [None] * len(cells)
    searches: dict[int, tuple[int, int, float]] = {}  # cell -> (low, high, target); curve(high) >= target
    for i, (cell, limit) in enumerate(zip(cells, limits)):
        tolerance = 1e-12 * max(1.0, abs(cell.mean))
        half = cell.ci95 if math.isfinite(cell.ci95) else 0.0
        if top[limit] < cell.mean - half - tolerance:
            found[i] = f">{MULTIPLIER_SEARCH_LIMIT}"
        elif top[limit] <= cell.mean + half + tolerance:
            found[i] = SATURATED
        else:
            searches[i] = (1, limit, cell.mean - tolerance)
    while searches:
        probes = {i: _probes(low, high) for i, (low, high, _) in searches.items()}
        values = curve_at(sorted(set().union(*probes.values())))
        for i, points in probes.items():
            low, high, target = searches.pop(i)
            for n in points:
                if values[n] >= target:
                    high = n
                    break
                low = n + 1
            if low >= high:
                found[i] = high / cells[i].budget
            else:
                searches[i] = (low, high, target)
    return found


def compute_multiplier(curve: Callable[[int], float], mean_best_reward: float, budget: int,
                       ci95: float = 0.0) -> float | str:
    """The multiplier of one result on a curve given as a function of n (a world's ``prompt_value``)."""
    return find_multipliers(curve_of(curve), [Cell(mean_best_reward, ci95, budget)])[0]


def per_cost(multiplier: float | str, budget: int, cost: float) -> float | str:
    """A multiplier n*/N as BoN's cost over another: n* BoN rollouts (or whole responses' tokens, in
    units of one response) over ``cost`` in the same units; a lower bound stays one (">x"), and
    saturated stays saturated."""
    if multiplier == SATURATED:
        return SATURATED
    if isinstance(multiplier, str):
        return f">{MULTIPLIER_SEARCH_LIMIT * budget / cost:.4g}"
    return multiplier * budget / cost


def format_multiplier(multiplier: float | str | None) -> str:
    """A multiplier as tables print it: ``2.50x``, a bound or ``saturated`` as they are, ``-`` for none."""
    return "-" if multiplier is None else multiplier if isinstance(multiplier, str) else f"{multiplier:.2f}x"


def format_multiplier_range(multipliers: list | None) -> str:
    """A multiplier's range over a 95% interval as tables print it: ``1.19x-1.31x``, ``-`` for none."""
    return "-" if multipliers is None else "-".join(map(format_multiplier, multipliers))


def interval_digits(ci: float, most: int = 8) -> int:
    """Decimals that show a 95% half-width ``ci`` to two significant digits: 4 at least, ``most`` at most."""
    return 4 if not 0 < ci < math.inf else min(most, max(4, 1 - math.floor(math.log10(ci))))


def curve_of(curve: Callable[[int], float]) -> CurveAt:
    return lambda ns: {n: float(curve(n)) for n in ns}


def _probes(low: int, high: int) -> Iterable[int]:
    """Up to PROBES ascending points of [low, high) that cut it into near-equal parts: in ratio while
    high / low > PROBES + 1 (n* is usually within a few times N of N, not near 1024 N), then in length."""
    if high > (PROBES + 1) * low:
        points = {int(low * (high / low) ** (k / (PROBES + 1))) for k in range(1, PROBES + 1)}
    else:
        points = {low + (high - low) * k // (PROBES + 1) for k in range(1, PROBES + 1)}
    return sorted(p for p in points if low <= p < high)
