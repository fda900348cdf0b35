"""How SLG splits a budget of N rollouts: m rollouts per node, K states (docs/method.md, "The schedule").

Pure arithmetic. :func:`reference_schedule` is the reference code's formula, bit for bit (Python's
``round`` is banker's rounding, as there). :func:`default_schedule` is that formula wherever it fits
the budget; below N = 60 the reference overspends, and we shrink the split instead (see there).
"""

from __future__ import annotations

import math

from pipeline.errors import ConfigError

MIN_ROLLOUTS_PER_NODE = 20  # the reference's floor on m


def reference_schedule(budget: int) -> tuple[int, int]:
    """(m, K) exactly as the reference code computes it; may overspend for N < 60.

    m = max(20, round(round((ln N)^3 / 5) / 5) * 5); K = max(2, min(round(N / 2m), floor(N / (m + 2)))).
    """
    n = _check_budget(budget)
    m = max(MIN_ROLLOUTS_PER_NODE, round(round(math.log(n) ** 3 / 5) / 5) * 5)
    k = max(2, min(round(n / (2 * m)), n // (m + 2)))
    return m, k


def default_schedule(budget: int) -> tuple[int, int]:
    """(m, K) for budget N: the reference schedule, never spending more than N.

    Where the reference split fits (every N >= 60), it is returned unchanged. Below that it would
    spend (K+1)m > N; we keep K = 2 states and shrink m to floor(N/4), so the root and the two
    states take about 3/4 of the budget and the exploit phase the rest (the reference's ratio at
    N = 100 is 60/40). For N < 4 no split leaves anything to exploit: (m, K) = (N, 0), plain BoN.
    """
    n = _check_budget(budget)
    m, k = reference_schedule(n)
    if (k + 1) * m <= n:
        return m, k
    if n < 4:
        return n, 0
    return n // 4, 2


def validate_schedule(budget: int, rollouts_per_node: int, num_states: int) -> None:
    """Refuse a user-given (m, K) that cannot run within budget N: ``ValueError`` naming the values.

    Needs m >= 1, K >= 0 and (K + 1) * m <= N (the root and K states each get m rollouts).
    """
    n = _check_budget(budget)
    if isinstance(rollouts_per_node, bool) or int(rollouts_per_node) != rollouts_per_node or rollouts_per_node < 1:
        raise ConfigError(f"rollouts per node m must be a positive integer, got {rollouts_per_node!r}")
    if isinstance(num_states, bool) or int(num_states) != num_states or num_states < 0:
        raise ConfigError(f"number of states K must be a non-negative integer, got {num_states!r}")
    spent = (num_states + 1) * rollouts_per_node
    if spent > n:
        raise ConfigError(f"schedule m={rollouts_per_node}, K={num_states} spends (K+1)*m = {spent} "
                         f"rollouts before the exploit phase, more than the budget N={n}")


def _check_budget(budget: int) -> int:
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise ConfigError(f"budget N must be a positive integer, got {budget!r}")
    return int(budget)
