"""The best-of-n predictor against independent truths: enumeration of small discrete pools,
adaptive quadrature of its own tail model, normal samples with known V_n, and the properties a
prediction must have (never above the bound, ordered interval, equivariance, monotone in n)."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, special, stats

from pipeline.errors import ConfigError
from pipeline.stats.intervals import mixture_interval
from pipeline.stats.predict import FLAGS, predict_best_of_n, predict_node_values, predict_rows
from pipeline.stats.sample_rows import SampleRows, extension_rows, plug_in_rows
from pipeline.stats.tail import expected_max_std_normal, fit_tail_rows


def enumerated_best_of_n(values, n):
    """E[max of n draws with replacement] by listing all len(values)^n equally likely draws."""
    return float(np.mean([max(draw) for draw in itertools.product(values, repeat=n)]))


@pytest.mark.parametrize("values, n", [([0.0, 0.5, 1.0], 3), ([2.0, 2.0, 5.0, -1.0], 4), ([0.3, 0.3, 0.3, 0.9, 0.1], 3),
                                       ([1.0, 4.0], 1), ([7.0], 5)])
def test_plug_in_is_the_enumerated_best_of_n_of_the_sample(values, n):
    rows = SampleRows(np.array([values]), np.array([np.inf]))
    assert plug_in_rows(rows, np.array([[float(n)]]))[0, 0] == pytest.approx(enumerated_best_of_n(values, n), abs=1e-12)


def test_few_level_rewards_predict_the_exact_value_of_their_levels():
    # A reward with three levels, sampled often enough that every level shows: the prediction is
    # the plug-in (no continuous tail is invented) and equals the levels' exact best-of-n.
    levels, counts = [0.0, 0.25, 1.0], [60, 30, 6]
    sample = np.repeat(levels, counts)
    for n in (2, 3, 4, 100):
        result = predict_best_of_n(sample, n, upper_bound=1.0)
        assert result.model(0, 0) == "plug-in"
        assert result.value[0, 0] == pytest.approx(_levels_value(levels, counts, n), abs=1e-12)
    assert set(predict_best_of_n(sample, 100, upper_bound=1.0).flag_names(0)) >= {"ties", "few_distinct", "mass_at_bound"}


def _levels_value(levels, counts, n):
    """sum_j v_j (F_j^n - F_{j-1}^n), written out for sorted levels: the closed form of the enumeration."""
    cdf = np.cumsum(counts) / np.sum(counts)
    below = np.concatenate([[0.0], cdf[:-1]])
    return float(np.dot(levels, cdf ** n - below ** n))


def test_levels_closed_form_matches_enumeration():
    # The closed form above is checked once against brute force, so the test before it has an
    # independent reference.
    levels, counts = [0.0, 0.5, 2.0], [2, 1, 1]
    assert _levels_value(levels, counts, 3) == pytest.approx(enumerated_best_of_n([0.0, 0.0, 0.5, 2.0], 3), abs=1e-12)


def test_few_level_predictions_cover_the_pool_value_of_a_small_discrete_pool():
    # Samples of 32 from a 4-level pool; truth from the closed form. The predictor must not invent
    # a tail, and its interval (for a reward that may have an unseen level) covers the truth.
    rng = np.random.default_rng(7)
    levels, probs = np.array([0.0, 0.4, 0.7, 0.9]), np.array([0.5, 0.3, 0.15, 0.05])
    samples = rng.choice(levels, p=probs, size=(400, 32))
    n = 20
    truth = _levels_value(levels, probs, n)
    result = predict_rows(samples, n, upper_bound=1.0, groups=np.zeros(400))
    covered = np.mean((result.lower[:, 0] <= truth) & (truth <= result.upper[:, 0]))
    assert np.all(result.weight < 0.01)  # a few-level reward: the plug-in
    assert np.allclose(result.value, result.plug_in)
    assert covered >= 0.9  # Jeffreys bounds on the top level's share; binomial noise of 400 cases ~ 0.011


def test_a_rare_level_above_the_sample_stays_inside_the_interval():
    # Levels 0, 0.5 and a rare 1.0 (2%): 16 samples usually stop at 0.5 (tied, no tail to fit),
    # while best-of-100 reaches 1.0 with probability 0.87. Only the chance of an unseen level
    # above the top keeps the truth inside the interval; the point stays the plug-in.
    rng = np.random.default_rng(9)
    levels, probs = np.array([0.0, 0.5, 1.0]), np.array([0.70, 0.28, 0.02])
    samples = rng.choice(levels, p=probs, size=(500, 16))
    truth = _levels_value(levels, probs, 100)
    result = predict_rows(samples, 100, upper_bound=1.0, groups=np.zeros(500))
    unseen = samples.max(axis=1) < 1.0
    covered = (result.lower[:, 0] <= truth) & (truth <= result.upper[:, 0])
    assert unseen.mean() > 0.6 and covered[unseen].mean() >= 0.95
    assert np.allclose(result.value, result.plug_in, atol=1e-6)  # c ~ 1e-7 here: the plug-in


def test_an_atom_at_the_top_of_a_continuous_pool_stays_inside_the_interval():
    # Pools as a real generator gives them: distinct rewards below, and the likeliest answer
    # repeated exactly at the top (3-30% of the pool). The interior never ties, so c ~ 1, yet
    # best-of-512 stops at the top level. Before the interval was a mixture, the blend of the two
    # models' ends put the lower end above that top: 62%, 41% and 35% coverage at m = 8, 16, 32.
    # Truth: the pool's closed form. 300 pools: binomial sd 0.013 at 0.95.
    rng = np.random.default_rng(21)
    pools, truths = [], []
    for _ in range(300):
        body = rng.normal(size=400)
        top = np.quantile(body, 0.9)
        body = body[body < top]
        share = rng.uniform(0.03, 0.3)
        pool = np.concatenate([body, np.full(int(round(share * len(body) / (1 - share))), top)])
        values, counts = np.unique(pool, return_counts=True)
        pools.append(pool)
        truths.append(_levels_value(values, counts, 512))
    truths = np.array(truths)
    for m in (8, 16, 32):
        samples = np.stack([rng.choice(pool, size=m) for pool in pools])
        result = predict_rows(samples, 512, groups=np.zeros(len(pools)))
        assert np.mean(result.continuity) > 0.99  # the interior looks continuous
        covered = np.mean((result.lower[:, 0] <= truths) & (truths <= result.upper[:, 0]))
        assert covered >= 0.95, m


def test_top_level_is_one_for_a_tied_maximum_and_else_the_groups_share():
    # Group 0's share counts its open rows: two distinct values or more (a row of two rewards
    # included), the maximum below the bound. Rows of no or one reward, a constant row and a
    # maximum tied at the bound have their own rules: each is 1 if tied, and none is counted.
    nan = np.nan
    rewards = np.array([[0.1, 0.2, 0.3], [0.1, 0.3, 0.3], [0.2, 0.4, 0.5], [0.3, 0.6, 0.7], [0.2, 0.6, nan],
                        [nan] * 3, [0.4, nan, nan], [0.5, 0.5, 0.5], [0.2, 1.0, 1.0],
                        [0.2, 0.9, 0.9], [0.5, 0.6, 0.8], [0.5, 0.7, 0.8]])
    groups = np.array([0] * 9 + [1, 1, 2])
    result = predict_rows(rewards, 10, upper_bound=1.0, groups=groups)
    assert result.top_level.tolist() == [0.2, 1.0, 0.2, 0.2, 0.2, 0.2, 0.2, 1.0, 1.0, 1.0, 0.5, 0.0]


def test_a_batch_of_several_blocks_gives_each_row_what_its_own_block_gives():
    # 5000 rows are two blocks of the predictor; the second holds the rows with tied maxima. With
    # the pooled statistics passed in, each block alone must give the batch's intervals.
    rng = np.random.default_rng(12)
    rewards = rng.normal(size=(5000, 12))
    rewards[4096:, -1] = rewards[4096:].max(axis=1)  # a tied maximum
    whole = predict_rows(rewards, [100, 1000], groups=np.zeros(5000))
    for part in (slice(0, 4096), slice(4096, 5000)):
        alone = predict_rows(rewards[part], [100, 1000], continuity=whole.continuity[part],
                             top_level=whole.top_level[part], heavy=whole.flags[part])
        assert alone.lower.tolist() == whole.lower[part].tolist() and alone.upper.tolist() == whole.upper[part].tolist()


def test_a_group_of_rows_at_the_bound_leaves_an_open_rows_interval_alone():
    # Two rows saturated at the bound and one below it (data/real's MATH-500 example): the saturated
    # rows' tied maxima are mass at the bound, so the open row's interval is the one it gets alone.
    rng = np.random.default_rng(8)
    open_row = rng.uniform(0.0, 0.9, size=16)
    rewards = np.stack([np.append(rng.uniform(0, 1, 12), [1.0] * 4), np.append(rng.uniform(0, 1, 14), [1.0] * 2), open_row])
    together = predict_rows(rewards, [16, 256], upper_bound=1.0, groups=np.zeros(3),
                            continuity=np.ones(3))  # the same c as alone: only the tied tops differ
    alone = predict_rows(open_row[None, :], [16, 256], upper_bound=1.0, continuity=np.ones(1))
    assert together.top_level[2] == 0.0
    assert together.lower[2].tolist() == alone.lower[0].tolist() and together.upper[2].tolist() == alone.upper[0].tolist()


def _split_normal_mixture_ends(weight, first, second, alpha):
    """The same mixture's ends in scalar code: each model's CDF written out, Brent's method on it."""
    z = stats.norm.ppf(1 - alpha / 2)

    def cdf(x, low, point, high):
        scale = ((point - low) if x < point else (high - point)) / z
        return stats.norm.cdf((x - point) / scale) if scale > 0 else float(x >= point)

    def mixture(x):
        return weight * cdf(x, *first) + (1 - weight) * cdf(x, *second)

    span = (min(first[0], second[0]) - 1.0, max(first[2], second[2]) + 1.0)
    return tuple(optimize.brentq(lambda x, t=target: mixture(x) - t, *span, xtol=1e-13) for target in (alpha / 2, 1 - alpha / 2))


@pytest.mark.parametrize("weight, first, second", [
    (0.5, (1.0, 2.0, 3.5), (0.0, 0.4, 0.6)),      # far apart: each end follows the farther model
    (0.9, (1.0, 2.0, 3.5), (0.0, 0.4, 0.6)),
    (0.3, (-1.0, 0.0, 2.0), (-0.5, 0.1, 0.3)),    # overlapping, skewed
    (0.98, (0.2, 0.25, 0.9), (-3.0, -1.0, 1.0)),
])
def test_mixture_interval_matches_brents_method_on_the_mixture(weight, first, second):
    arrays = lambda model: tuple(np.array([[v]]) for v in model)  # noqa: E731
    lower, upper = mixture_interval(np.array([[weight]]), arrays(first), arrays(second), 0.05)
    expected = _split_normal_mixture_ends(weight, first, second, 0.05)
    assert (lower[0, 0], upper[0, 0]) == pytest.approx(expected, abs=1e-9)


def test_a_model_whose_point_is_outside_its_interval_keeps_its_tails():
    # Model A's point (0.5) is below its interval [1, 3]: it is read as the normal of that interval
    # (median 2), so alpha/2 of it lies below 1. B is far above, so with weight 1/2 the mixture's
    # 2.5% point is A's 5% point, in closed form; a point mass at 1 would put it at 1.
    first = (np.array([1.0]), np.array([0.5]), np.array([3.0]))
    second = (np.array([100.0]), np.array([101.0]), np.array([102.0]))
    lower, _ = mixture_interval(np.array([0.5]), first, second, 0.05)
    assert lower[0] == pytest.approx(stats.norm.ppf(0.05, loc=2.0, scale=1.0 / stats.norm.ppf(0.975)), abs=1e-9)


def test_mixture_interval_of_one_model_is_its_own_interval():
    first, second = (np.array([1.0]), np.array([2.0]), np.array([3.5])), (np.array([0.0]), np.array([0.4]), np.array([0.6]))
    assert [e.tolist() for e in mixture_interval(np.array([1.0]), first, second, 0.05)] == [[1.0], [3.5]]
    assert [e.tolist() for e in mixture_interval(np.array([0.0]), first, second, 0.05)] == [[0.0], [0.6]]


def _model_tail_reference(sample, n, bound=None, log_scale=False):
    """X_n of ``extension_rows`` by adaptive quadrature: E[h(max)] = h(v_lo) + int (1 - F^n) h' dv
    over the model's CDF written out in scalar code (h the identity, or B - exp(-v) on log scale)."""
    x = np.sort(np.asarray(sample, dtype=float))
    v = -np.log(bound - x) if log_scale else x
    mu, sigma, _, _ = fit_tail_rows(v[None, :])
    mu, sigma = float(mu[0]), float(sigma[0])
    m, top = len(v), v[-1]
    pi = stats.norm.sf((top - mu) / sigma)
    h = (lambda y: bound - math.exp(-y)) if log_scale else (lambda y: y)
    dh = (lambda y: math.exp(-y)) if log_scale else (lambda y: 1.0)
    body = h(top) - sum((h(v[i + 1]) - h(v[i])) * ((1 - pi) * (i + 1) / m) ** n for i in range(m - 1))
    survival_top = stats.norm.sf((top - mu) / sigma)

    def integrand(y):
        exceed = pi * stats.norm.sf((y - mu) / sigma) / survival_top
        return -math.expm1(n * math.log1p(-exceed)) * dh(y)

    upper = bound if (bound is not None and not log_scale) else np.inf
    tail = integrate.quad(integrand, top, upper, epsabs=1e-13, epsrel=1e-11, limit=400)[0]
    return body + tail


@pytest.mark.parametrize("n", [1, 7, 100, 1000, 10_000, 10 ** 5, 10 ** 7, 10 ** 9, 10 ** 12, 10 ** 15, 2 ** 53])
def test_tail_extension_matches_adaptive_quadrature_of_its_model(n):
    rng = np.random.default_rng(n)
    for sample, bound, log_scale in [(rng.normal(size=20), None, False), (rng.gamma(2.0, size=12), None, False),
                                     (rng.uniform(0, 0.9, size=16), 1.0, False), (rng.beta(5, 1, size=24) * 0.999, 1.0, True)]:
        rows = SampleRows(np.sort(sample)[None, :], np.array([np.inf if bound is None else bound]))
        fit_values = rows.model if log_scale else rows.ordered
        mu, sigma, _, _ = fit_tail_rows(fit_values)
        reward, _ = extension_rows(rows, np.array([[float(n)]]), mu, sigma, np.array([log_scale]))
        # Simpson's rule, 49 to 385 nodes by n: 2e-5 sigma is the error bound stated in the module.
        assert reward[0, 0] == pytest.approx(_model_tail_reference(sample, n, bound, log_scale), abs=2e-5 * float(sigma[0]))


def test_rows_of_different_grids_in_one_batch_get_what_each_gets_alone():
    # Rows asking for small and large n take different node counts in one call.
    rng = np.random.default_rng(2)
    samples = np.sort(rng.normal(size=(3, 20)), axis=1)
    n_table = np.array([[10.0, 100.0], [10.0, 1e9], [1e6, 1e15]])
    rows = SampleRows(samples, np.full(3, np.inf))
    mu, sigma, _, _ = fit_tail_rows(rows.ordered)
    together, _ = extension_rows(rows, n_table, mu, sigma)
    for i in range(3):
        alone, _ = extension_rows(SampleRows(samples[i:i + 1], np.array([np.inf])), n_table[i:i + 1], mu[i:i + 1], sigma[i:i + 1])
        assert together[i].tolist() == alone[0].tolist()


def test_many_rows_of_a_fine_grid_are_integrated_in_parts_each_as_alone():
    # 1200 rows at n = 10^15 (385 nodes) pass the 4096 x 49 cells of one part: every part counts.
    rng = np.random.default_rng(6)
    samples = np.sort(rng.normal(size=(1200, 12)), axis=1)
    rows = SampleRows(samples, np.full(1200, np.inf))
    mu, sigma, _, _ = fit_tail_rows(rows.ordered)
    together, _ = extension_rows(rows, np.full((1200, 1), 1e15), mu, sigma)
    for i in (0, 600, 1199):
        alone, _ = extension_rows(SampleRows(samples[i:i + 1], np.array([np.inf])), np.array([[1e15]]), mu[i:i + 1], sigma[i:i + 1])
        assert together[i, 0] == alone[0, 0]


def test_slg_predict_writes_the_extension_its_prediction_blends_towards():
    """Each --out line carries X_n (checked against adaptive quadrature of its model), and predicted
    is plug_in + weight (X_n - plug_in): the line alone rebuilds it (to weight's 4 decimals)."""
    from pipeline.offline.predictions import predict_file

    rng = np.random.default_rng(3)
    samples = [rng.normal(size=20).tolist(), rng.gamma(2.0, size=12).tolist()]
    lines, _, _ = predict_file(["a", "b"], samples, [7, 100, 1000])
    for line in lines:
        sample = samples["ab".index(line["id"])]
        assert line["extension"] == pytest.approx(_model_tail_reference(np.array(sample), line["n"], None, False), abs=1e-3)
        rebuilt = line["plug_in"] + line["weight"] * (line["extension"] - line["plug_in"])
        assert rebuilt == pytest.approx(line["predicted"], abs=1e-4 * abs(line["extension"] - line["plug_in"]) + 1e-12)


def test_normal_rewards_interval_covers_the_exact_value_at_the_nominal_rate():
    # Exactly normal rewards, fresh seeds (the reference simulation behind the pivot uses others):
    # the 95% interval must cover V_n = mu + sigma E(n) in 95% of 4000 samples. Noise: binomial
    # sd 0.0034 here, plus ~0.004 from the reference's 3000 samples: +-0.02 is about 3.5 sd.
    rng = np.random.default_rng(123)
    for m, n in ((16, 1000), (64, 100)):
        location, scale = rng.normal(size=4000), rng.uniform(0.1, 3.0, size=4000)
        samples = location[:, None] + scale[:, None] * rng.standard_normal((4000, m))
        truth = location + scale * expected_max_std_normal(n)
        result = predict_rows(samples, n, groups=np.zeros(4000))
        covered = np.mean((result.lower[:, 0] <= truth) & (truth <= result.upper[:, 0]))
        assert covered == pytest.approx(0.95, abs=0.02), (m, n)


def test_saturating_rewards_interval_covers_at_the_nominal_rate():
    # Rewards sigmoid(l + Z), l ~ N(1, 1): the bounded world's states; V_n by quadrature of the
    # max of n normals. The interval comes from the tail of -log(1 - x); tolerance as above, wider
    # for the approximation (softplus(z) is only close to z at the top).
    rng = np.random.default_rng(5)
    latent = rng.normal(1.0, 1.0, size=3000)
    samples = special.expit(latent[:, None] + rng.standard_normal((3000, 32)))
    n = 1000
    edges = np.linspace(-9, 9, 6001)
    mass = np.diff(np.exp(n * special.log_ndtr(edges)))
    truth = special.expit(latent[:, None] + (edges[:-1] + edges[1:])[None, :] / 2) @ mass
    result = predict_rows(samples, n, upper_bound=1.0, groups=np.zeros(3000))
    covered = np.mean((result.lower[:, 0] <= truth) & (truth <= result.upper[:, 0]))
    assert 0.92 <= covered <= 0.98
    assert (result.upper <= 1.0).all() and (result.value < 1.0).all()


def test_the_blend_weight_beats_both_models_on_normal_rewards():
    # w_normal is the MSE-optimal step from the plug-in towards the extension for normal rewards:
    # on fresh normal samples the prediction's squared error is below both ends'.
    rng = np.random.default_rng(11)
    samples = rng.standard_normal((6000, 16))
    n = 1000
    truth = expected_max_std_normal(n)
    result = predict_rows(samples, n, groups=np.zeros(6000))
    rows = SampleRows(samples, np.full(6000, np.inf))
    mu, sigma, _, _ = fit_tail_rows(rows.ordered)
    extension, _ = extension_rows(rows, np.full((6000, 1), float(n)), mu, sigma)
    mse = lambda v: float(np.mean((v - truth) ** 2))  # noqa: E731
    assert mse(result.value[:, 0]) < mse(extension[:, 0]) < mse(result.plug_in[:, 0])


rewards_below_one = st.lists(st.floats(min_value=-5.0, max_value=1.0, allow_nan=False), min_size=1, max_size=24)


@settings(max_examples=100, deadline=None)
@given(rewards_below_one, st.lists(st.integers(1, 10 ** 5), min_size=1, max_size=4), st.booleans())
def test_nothing_is_predicted_above_the_bound_and_intervals_are_ordered(rewards, ns, rounded):
    values = np.round(rewards, 1) if rounded else np.asarray(rewards)  # rounded: ties and mass at the bound
    result = predict_best_of_n(values, ns, upper_bound=1.0)
    assert np.all(np.isfinite(result.value)) and np.all(np.isfinite(result.lower)) and np.all(np.isfinite(result.upper))
    assert np.all(result.upper <= 1.0) and np.all(result.value <= 1.0)
    assert np.all(result.lower <= result.value) and np.all(result.value <= result.upper)
    order = np.argsort(ns)
    assert np.all(np.diff(result.value[0, order]) >= -1e-12)  # more samples never predict less


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=3, max_size=30, unique=True), st.floats(0.01, 100), st.floats(-100, 100))
def test_unbounded_predictions_are_location_scale_equivariant(rewards, a, b):
    base = predict_best_of_n(np.asarray(rewards, dtype=float), [10, 1000])
    moved = predict_best_of_n(a * np.asarray(rewards, dtype=float) + b, [10, 1000])
    tolerance = 1e-6 * (a * 1000 + abs(b))
    for field in ("value", "lower", "upper"):
        assert getattr(moved, field) == pytest.approx(a * getattr(base, field) + b, abs=tolerance)


def test_continuity_separates_few_level_from_continuous_rewards():
    rng = np.random.default_rng(3)
    continuous = rng.normal(size=(50, 16))
    pass_rates = rng.integers(0, 5, size=(50, 16)) / 8.0  # 5 levels
    assert predict_rows(continuous, 100, groups=np.zeros(50)).continuity.min() > 0.99
    few = predict_rows(pass_rates, 100, upper_bound=1.0, groups=np.zeros(50))
    assert few.continuity.max() < 0.01 and np.allclose(few.value, few.plug_in)


def test_groups_pool_only_within_themselves():
    rng = np.random.default_rng(4)
    samples = rng.normal(size=(3, 4, 12))
    original = predict_node_values(samples, np.array([100, 200, 300]))
    changed = samples.copy()
    changed[1] = np.round(changed[1])  # episode 1 becomes tie-heavy
    rounded = predict_node_values(changed, np.array([100, 200, 300]))
    for before, after in zip(original, rounded):  # value, interval, flags
        assert np.array_equal(before[[0, 2]], after[[0, 2]])
        assert not np.array_equal(before[1], after[1])


def test_node_values_take_ragged_nodes_and_give_nan_for_empty_ones():
    rng = np.random.default_rng(6)
    samples = np.full((2, 3, 10), np.nan)
    samples[:, 0, :10] = rng.normal(size=(2, 10))
    samples[:, 1, :4] = rng.normal(size=(2, 4))
    value, lower, upper, flags = predict_node_values(samples, np.array([50, 500]))
    assert value.shape == (2, 3) and np.isnan(value[:, 2]).all() and np.isfinite(value[:, :2]).all()
    alone = predict_best_of_n(samples[0, 1, :4], 50).value[0, 0]
    assert np.isfinite(alone) and np.all(lower[:, :2] <= value[:, :2])


def test_mass_at_the_bound_predicts_the_bound_soon():
    sample = np.array([1.0, 1.0, 1.0, 0.2, 0.9, 0.5, 1.0, 0.7])
    result = predict_best_of_n(sample, [1, 64], upper_bound=1.0)
    assert result.value[0, 1] == pytest.approx(1.0 - 0.3 * 0.5 ** 64, abs=1e-12)  # plug-in: P(no 1 in 64) = 0.5^64
    assert result.upper[0, 1] == 1.0 and "mass_at_bound" in result.flag_names(0) and "at_bound" in result.flag_names(0)
    assert result.value[0, 0] == pytest.approx(sample.mean())


def test_flags_follow_their_rules():
    rng = np.random.default_rng(8)
    assert predict_best_of_n([0.3] * 6, 10).flag_names(0) == ["constant", "few_distinct"]
    assert predict_best_of_n(rng.normal(size=30), 10).flag_names(0) == []
    tied = predict_best_of_n([0.0, 0.2, 0.2, 0.5, 0.7, 0.9, 1.1, 1.3], 10)
    assert "ties" in tied.flag_names(0) and "few_distinct" not in tied.flag_names(0)
    heavy = predict_rows(rng.standard_t(2, size=(200, 32)), 100, groups=np.zeros(200))
    normal = predict_rows(rng.normal(size=(200, 32)), 100, groups=np.zeros(200))
    bit = 1 << FLAGS.index("heavy_tail")
    assert np.all(heavy.flags & bit) and np.mean(normal.flags & bit > 0) < 0.05  # 1% per row for normal rewards


@pytest.mark.parametrize("call, match", [
    (lambda: predict_best_of_n([1.0, np.inf], 10), "infinite"),
    (lambda: predict_best_of_n([1.0, 2.0], 0), "n must be integers >= 1"),
    (lambda: predict_best_of_n([1.0, 2.0], 2.5), "n must be integers >= 1"),
    (lambda: predict_best_of_n([1.0, 2.0], 2 ** 63 - 1), r"at most 2\^53, where floats stop counting\), got 9223372036854775807"),
    (lambda: predict_best_of_n([1.0, 2.0], [10], upper_bound=1.5), "below a reward"),
    (lambda: predict_best_of_n([1.0, 2.0], [10], upper_bound=np.inf), "finite"),
    (lambda: predict_rows(np.zeros(3), 10), "rows, length"),
    (lambda: predict_rows(np.zeros((3, 2)), 10, groups=[0, 1]), "one label per row"),
    (lambda: predict_best_of_n([1.0, 2.0], 10, confidence=1.5), "confidence"),
])
def test_bad_input_is_a_config_error(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_predict_imports_no_engine_or_ray():
    import subprocess
    import sys

    code = ("import sys, pipeline.stats.predict, pipeline.offline.calibration; "
            "print(sorted(m for m in ('ray', 'vllm', 'torch', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_interval_of_a_sample_that_reaches_the_bound_ends_at_the_bound():
    """No best-of-n of rewards bounded by B exceeds B, so no end of the interval may. This sample
    (one reward at the bound, a wide spread below it) is one whose few-level interval is raised to
    the continuous one on the reward scale, which here reaches 2 to 21 before the cut at B = 1."""
    sample = np.array([0.1, 0.3, 0.4, 0.6, 0.8, 1.0])
    result = predict_best_of_n(sample, [1, 2, 4, 10, 100], upper_bound=1.0)
    assert np.all(result.upper <= 1.0)
    assert np.all(result.lower <= result.value) and np.all(result.value <= result.upper)
