"""The schedule against the table of REFERENCE.md, and the budget guard."""

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
