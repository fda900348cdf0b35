"""The tail estimator against independent references: the literal reference recipe, scipy's
truncated normal, high-precision quadrature, and the properties a location-scale fit must have."""

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from pipeline.stats.tail import (
    expected_max_std_normal,
    fit_tail,
    fit_tail_rows,
    predict_best_of_n,
    tail_constants,
)


def reference_fit(rewards, q):
    """The published method's steps 1-3 and 5 (docs/method.md), written out as the reference code does them."""
    rewards = np.asarray(rewards, dtype=float)
    z = stats.norm.ppf(1 - q)
    lam = stats.norm.pdf(z) / q
    delta = 1 + z * lam - lam**2
    thr = np.percentile(rewards, 100 * (1 - q))
    tail = rewards[rewards >= thr]
    if len(tail) < 2 or np.var(tail, ddof=1) == 0:
        return rewards.max(), 0.0
    sigma = np.sqrt(np.var(tail, ddof=1) / delta)
    return tail.mean() - sigma * lam, sigma


def test_constants_for_the_reference_tail_fraction():
    z, lam, delta = tail_constants(0.2)
    assert z == pytest.approx(0.841621, abs=1e-6)
    assert lam == pytest.approx(1.399810, abs=1e-6)
    assert delta == pytest.approx(0.218643, abs=1e-6)


@pytest.mark.parametrize("q", [0.05, 0.2, 0.5, 0.8])
def test_constants_are_the_moments_of_the_truncated_standard_normal(q):
    z, lam, delta = tail_constants(q)
    truncated = stats.truncnorm(a=z, b=np.inf)
    assert truncated.mean() == pytest.approx(lam, rel=1e-10)
    assert truncated.var() == pytest.approx(delta, rel=1e-9)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def assert_fit_matches_reference(rewards, q):
    mu, sigma = reference_fit(rewards, q)
    fit = fit_tail(rewards, q)
    scale = max(1.0, max(abs(r) for r in rewards))
    if sigma == 0 or fit.sigma == 0:
        # A tie for the reference is a tie for the fit; the fit may call a tail a tie the
        # reference fits only when that spread is rounding noise (fit_tail_rows' floor:
        # sigma <= 8 eps max|r| / sqrt(delta), about 4e-15 of the largest reward).
        assert not (sigma == 0 and fit.sigma > 0), f"the reference saw a tie, the fit sigma {fit.sigma}"
        assert sigma <= 1e-12 * scale, f"a real spread ({sigma}) was called a tie"
        return
    assert fit.sigma == pytest.approx(sigma, rel=1e-9)
    assert fit.mu == pytest.approx(mu, rel=1e-9, abs=1e-9 * scale)


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, min_size=1, max_size=80), st.sampled_from([0.1, 0.2, 0.3, 0.5]))
def test_fit_matches_the_reference_recipe(rewards, q):
    assert_fit_matches_reference(rewards, q)


@pytest.mark.parametrize("rewards", [[0.0] * 8 + [1.0, 1.0 + 1e-10], [5.0] * 9 + [5.0 + 3e-9], [0.1] * 9 + [0.1 + 1e-17],
                                     [1e6, 1e6 + 1e-4, 0.0, 0.0, 0.0]])
def test_tiny_spreads_are_ties_only_at_rounding_level(rewards):
    # Spreads of 1e-10 and 3e-9 are real (far above the ~1e-15 rounding of their values); 1e-17 on
    # 0.1 is below one ulp of it and becomes a tie in the floats themselves.
    assert_fit_matches_reference(rewards, 0.2)


def test_fit_matches_reference_on_ties_and_rounded_rewards():
    rng = np.random.default_rng(3)
    for _ in range(200):
        rewards = np.round(rng.normal(size=rng.integers(2, 60)) * 3) / 4
        mu, sigma = reference_fit(rewards, 0.2)
        fit = fit_tail(rewards)
        assert fit.sigma == pytest.approx(sigma, rel=1e-9, abs=1e-12)
        assert fit.mu == pytest.approx(mu, rel=1e-9, abs=1e-12)


def test_fit_recovers_a_normal_from_a_large_sample():
    rewards = np.random.default_rng(0).normal(2.0, 3.0, size=400_000)
    fit = fit_tail(rewards)
    assert fit.mu == pytest.approx(2.0, abs=0.05)
    assert fit.sigma == pytest.approx(3.0, abs=0.05)
    assert fit.n_tail == pytest.approx(80_000, abs=2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=2, max_size=50),
       st.floats(0.01, 100), st.floats(-100, 100))
def test_fit_is_location_scale_equivariant(rewards, a, b):
    # Integer rewards keep ties and order exact under a*r + b, as the property needs.
    base = fit_tail(rewards)
    moved = fit_tail([a * r + b for r in rewards])
    assert moved.sigma == pytest.approx(a * base.sigma, rel=1e-6, abs=1e-6)
    assert moved.mu == pytest.approx(a * base.mu + b, rel=1e-6, abs=1e-5 * (1 + abs(b) + a * 100))


def test_degenerate_tails_predict_the_maximum():
    assert fit_tail([0.7]).sigma == 0 and fit_tail([0.7]).mu == 0.7
    constant = fit_tail([1.0] * 10)
    assert constant.degenerate and constant.mu == 1.0
    assert predict_best_of_n([1.0] * 10, 1000) == 1.0
    # 0.1 summed three times is not 0.3: the tail's spread is rounding noise, not a fit.
    assert fit_tail([0.1] * 9 + [0.1 + 1e-17]).degenerate


@pytest.mark.parametrize("bad, message", [([], "empty"), ([1.0, float("nan")], "non-finite"),
                                          ([1.0, float("inf")], "non-finite"), ([[1.0, 2.0]], "1-D")])
def test_bad_rewards_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        fit_tail(bad)


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5])
def test_tail_fraction_outside_unit_interval_is_refused(q):
    with pytest.raises(ValueError, match="tail_fraction"):
        fit_tail([1.0, 2.0, 3.0], q)


def test_rows_with_absent_rewards_fit_like_the_trimmed_rows():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(5, 30))
    lengths = [30, 17, 5, 2, 1]
    for i, length in enumerate(lengths):
        rows[i, length:] = np.nan
    mu, sigma, n_tail, threshold = fit_tail_rows(rows)
    for i, length in enumerate(lengths):
        fit = fit_tail(rows[i, :length])
        assert (mu[i], sigma[i], n_tail[i]) == pytest.approx((fit.mu, fit.sigma, fit.n_tail), rel=1e-12)


def mp_expected_max(n):
    """E[max of n N(0,1)] by mpmath quadrature at 30 digits: an independent reference."""
    mpmath.mp.dps = 30
    pdf = lambda x: mpmath.npdf(x)  # noqa: E731
    cdf = lambda x: mpmath.ncdf(x)  # noqa: E731
    centre = mpmath.sqrt(2 * mpmath.log(n))
    return float(mpmath.quad(lambda x: x * n * pdf(x) * cdf(x) ** (n - 1), [-mpmath.inf, 0, centre - 1, centre, centre + 1, mpmath.inf]))


@pytest.mark.parametrize("n", [2, 3, 7, 100, 1000, 12_345, 10**5, 10**6, 10**7, 10**9, 10**12, 10**15, 2**53])
def test_expected_max_exact_against_high_precision_quadrature(n):
    assert expected_max_std_normal(n) == pytest.approx(mp_expected_max(n), abs=1e-6)


def test_expected_max_known_values():
    assert expected_max_std_normal(1) == 0.0
    assert expected_max_std_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-12)
    assert expected_max_std_normal(3) == pytest.approx(1.5 / math.sqrt(math.pi), abs=1e-12)
    assert expected_max_std_normal(100) == pytest.approx(2.5076, abs=1e-4)
    assert expected_max_std_normal(1000) == pytest.approx(3.2414, abs=1e-4)
    assert expected_max_std_normal(10000) == pytest.approx(3.8516, abs=1e-4)


def test_expected_max_quantile_rule_is_the_reference_approximation():
    assert expected_max_std_normal(1, "quantile") == 0.0
    assert expected_max_std_normal(100, "quantile") == pytest.approx(stats.norm.ppf(0.99), rel=1e-12)
    # The approximation is low: 7.2 % at n = 100, 4.7 % at n = 1000 (the method's notes say 7-9 %).
    for n in (10, 100, 1000, 10**5):
        assert expected_max_std_normal(n, "quantile") < expected_max_std_normal(n)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_expected_max_refuses_non_positive_integers(bad):
    with pytest.raises(ValueError, match="positive integer"):
        expected_max_std_normal(bad)


def test_expected_max_refuses_unknown_rule():
    with pytest.raises(ValueError, match="unknown expected-max rule"):
        expected_max_std_normal(10, "gumbel")


def test_prediction_is_monotone_in_n_and_clipped_at_the_bound():
    rewards = np.random.default_rng(2).normal(size=40)
    curve = [predict_best_of_n(rewards, n) for n in (1, 2, 5, 10, 100, 1000, 10**5)]
    assert all(a <= b for a, b in zip(curve, curve[1:]))
    fit = fit_tail(rewards)
    assert predict_best_of_n(rewards, 1000) == pytest.approx(fit.mu + fit.sigma * expected_max_std_normal(1000))
    bounded = np.random.default_rng(2).uniform(0.9, 1.0, size=40)
    assert predict_best_of_n(bounded, 10**6) > 1.0
    assert predict_best_of_n(bounded, 10**6, upper_bound=1.0) == 1.0
