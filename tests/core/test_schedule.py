"""The schedule against the reference schedule's table (docs/method.md), and the budget guard."""

import pytest

from pipeline.stats.schedule import default_schedule, reference_schedule, validate_schedule

REFERENCE_TABLE = {100: (20, 2), 256: (35, 4), 500: (50, 5), 1000: (65, 8), 2000: (90, 11),
                   4096: (115, 18), 10000: (155, 32)}


@pytest.mark.parametrize("budget, expected", REFERENCE_TABLE.items())
def test_reference_table(budget, expected):
    assert reference_schedule(budget) == expected
    assert default_schedule(budget) == expected


def test_bankers_rounding_as_in_the_reference():
    # N = 100: N / 2m = 2.5 rounds to 2 (Python's round), not 3.
    assert reference_schedule(100)[1] == 2


def test_reference_overspends_below_60_but_the_default_never_does():
    assert reference_schedule(50) == (20, 2)  # (K+1)m = 60 > 50
    for budget in range(1, 5001):
        m, k = default_schedule(budget)
        validate_schedule(budget, m, k)
        assert (k + 1) * m <= budget
        if budget >= 60:
            assert (m, k) == reference_schedule(budget)


def test_small_budgets_shrink_m_or_become_bon():
    assert default_schedule(50) == (12, 2)
    assert default_schedule(3) == (3, 0)


@pytest.mark.parametrize("m, k, match", [(20, 5, "more than the budget"), (0, 2, "positive integer"),
                                         (10, -1, "non-negative"), (2.5, 1, "positive integer")])
def test_validator_refuses_bad_splits(m, k, match):
    with pytest.raises(ValueError, match=match):
        validate_schedule(100, m, k)


@pytest.mark.parametrize("budget", [0, -5, 1.5])
def test_bad_budget_is_refused(budget):
    with pytest.raises(ValueError, match="budget N"):
        default_schedule(budget)


def schedule_from_the_docs(n: int) -> tuple[int, int]:
    """The reference code's formula (docs/method.md), then the module's documented rule where it would overspend: K = 2 states
    and m = floor(N/4) (root and states take about 3/4 of N), and plain BoN (N, 0) below N = 4, where
    no split leaves a rollout to exploit."""
    import math

    m = max(20, round(round(math.log(n) ** 3 / 5) / 5) * 5)
    k = max(2, min(round(n / (2 * m)), math.floor(n / (m + 2))))
    if (k + 1) * m <= n:
        return m, k
    return (n, 0) if n < 4 else (n // 4, 2)


@pytest.mark.parametrize("budget, expected", [(1, (1, 0)), (2, (2, 0)), (3, (3, 0)), (4, (1, 2)), (5, (1, 2)),
                                              (7, (1, 2)), (8, (2, 2)), (59, (14, 2)), (60, (20, 2)), (61, (20, 2))])
def test_schedule_at_the_edges_of_its_rules(budget, expected):
    """N = 4 is the smallest budget with a split (root 1, two states of 1, one rollout left to exploit);
    N = 60 the smallest where the reference's (20, 2) fits (exactly: at N = 60 it leaves nothing to exploit)."""
    assert schedule_from_the_docs(budget) == expected
    assert default_schedule(budget) == expected


def test_schedule_follows_the_documented_rules_at_every_budget_up_to_300():
    for budget in range(1, 301):
        assert default_schedule(budget) == schedule_from_the_docs(budget), budget


def test_budgets_go_up_to_ten_million():
    """10^7 is the largest budget a run or a replay takes (a replay holds 8 bytes a rollout of each episode)."""
    from pipeline.errors import ConfigError
    from pipeline.search.methods import MAX_BUDGET, check_budgets

    assert MAX_BUDGET == 10**7
    check_budgets([1, 10**7])
    with pytest.raises(ConfigError, match="budget N must be at most 10,000,000"):
        check_budgets([10**7 + 1])
