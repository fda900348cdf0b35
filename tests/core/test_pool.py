"""The exact pool values against brute-force enumeration, and their stability on large pools."""

import itertools

import numpy as np
import pytest

from pipeline.stats.pool import PoolCurve, expected_max_of_pool, expected_max_of_weighted_pool


@pytest.mark.parametrize("pool", [[3.0], [1.0, 2.0], [2.0, 2.0, 1.0], [0.5, -1.0, 3.0, 3.0, 2.0], [-4.0, 7.5, 0.0, 1.0]])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_with_replacement_equals_enumeration(pool, n):
    brute = np.mean([max(draw) for draw in itertools.product(pool, repeat=n)])
    assert expected_max_of_pool(pool, n) == pytest.approx(brute, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("pool", [[1.0, 2.0], [2.0, 2.0, 1.0], [0.5, -1.0, 3.0, 3.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0, 0.0]])
def test_without_replacement_equals_enumeration(pool):
    for n in range(1, len(pool) + 1):
        brute = np.mean([max(c) for c in itertools.combinations(pool, n)])
        assert expected_max_of_pool(pool, n, replace=False) == pytest.approx(brute, rel=1e-12, abs=1e-12)


def test_without_replacement_refuses_more_draws_than_the_pool():
    with pytest.raises(ValueError, match="without replacement"):
        expected_max_of_pool([1.0, 2.0], 3, replace=False)


@pytest.mark.parametrize("bad, match", [([], "empty"), ([1.0, np.nan], "non-finite")])
def test_bad_pools_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        expected_max_of_pool(bad, 2)


def test_weighted_pool_equals_the_expanded_pool():
    values, weights = [1.0, 5.0, 2.0], [1, 3, 2]
    expanded = [1.0] + [5.0] * 3 + [2.0] * 2
    for n in (1, 2, 7, 50):
        assert expected_max_of_weighted_pool(values, weights, n) == pytest.approx(expected_max_of_pool(expanded, n))
    assert PoolCurve(values, weights).expected_max([1, 2]).shape == (2,)


def test_large_pool_is_stable_and_matches_the_closed_form_of_uniform_ranks():
    # Pool = 0, 1, ..., L-1: P(max <= i) = ((i+1)/L)^n, so E[max] = L-1 - sum_{i<L-1} ((i+1)/L)^n.
    size = 10**6
    pool = np.random.default_rng(0).permutation(size).astype(float)
    for n in (1, 10, 1000, 10**6):
        ranks = np.arange(1, size, dtype=np.float64) / size
        expected = (size - 1) - np.sum(np.exp(n * np.log(ranks)))
        assert expected_max_of_pool(pool, n) == pytest.approx(expected, rel=1e-12)
    without = expected_max_of_pool(pool, size, replace=False)
    assert without == size - 1  # drawing the whole pool always finds the top
    assert expected_max_of_pool(pool, 1, replace=False) == pytest.approx((size - 1) / 2)
