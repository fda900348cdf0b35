"""Simulated worlds: their ground truth against Monte Carlo and closed forms."""

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from pipeline.offline.worlds import FAMILY_PARAMS, WORLDS, make_world
from pipeline.stats.tail import expected_max_std_normal


@pytest.mark.parametrize("family", sorted(WORLDS))
@pytest.mark.parametrize("n", [1, 8, 64])
def test_prompt_value_matches_monte_carlo(family, n):
    world = make_world(family)
    rng = np.random.default_rng(11)
    episodes = 40_000 if n < 64 else 10_000
    rewards, _ = world.sample_rewards(rng, world.sample_states(rng, (episodes, n)))
    best = rewards.max(axis=1)
    tolerance = 4.5 * best.std() / np.sqrt(episodes) + 1e-4  # floor: a saturated sample has no spread
    assert world.prompt_value(n) == pytest.approx(best.mean(), abs=tolerance)


@pytest.mark.parametrize("family", sorted(WORLDS))
def test_state_value_matches_monte_carlo(family):
    world = make_world(family)
    rng = np.random.default_rng(5)
    latents = world.sample_states(rng, (4,))
    n, episodes = 32, 20_000
    rewards, _ = world.sample_rewards(rng, np.broadcast_to(latents[:, None, None], (4, episodes, n)).copy())
    best = rewards.max(axis=2)
    tolerance = 4.5 * best.std(axis=1) / np.sqrt(episodes) + 1e-9
    assert np.all(np.abs(world.state_value(latents, n) - best.mean(axis=1)) <= tolerance)


def test_gaussian_closed_forms():
    world = make_world("gaussian", sigma0=0.5, sigma1=2.0)
    assert world.prompt_value(100) == pytest.approx(np.hypot(0.5, 2.0) * expected_max_std_normal(100))
    assert world.state_value(np.array([1.0]), 50)[0] == pytest.approx(1.0 + 2.0 * expected_max_std_normal(50))


def test_discrete_values_are_exact_sums():
    world = make_world("discrete", levels=3)
    # levels 0, 0.5, 1 with cuts at -0.5, 0.5: a state at latent 0 with sigma1 = 1.
    p_low, p_mid = special.ndtr(-0.5), special.ndtr(0.5) - special.ndtr(-0.5)
    cdf = np.array([p_low, p_low + p_mid, 1.0])
    for n in (1, 3, 10):
        probabilities = np.diff(np.concatenate([[0.0], cdf**n]))
        assert world.state_value(np.array([0.0]), n)[0] == pytest.approx(probabilities @ [0.0, 0.5, 1.0], rel=1e-12)


def test_heavy_prompt_of_one_rollout_has_mean_zero():
    assert make_world("heavy").prompt_value(1) == pytest.approx(0.0, abs=1e-8)
    # near df = 1 the mean is two huge tails cancelling: each part of the far tails counts (2.6 without the lower one)
    assert make_world("heavy", df=1.05).prompt_value(1) == pytest.approx(0.0, abs=1e-8)
    assert make_world("heavy", df=1.05).state_value(np.zeros(1), 1)[0] == 0.0


def student_t_max(df: float, n: int) -> float:
    """E[max of n Student-t(df)] computed another way than the worlds do (they integrate 1 - F^n over
    rewards): int_0^1 Q(u) n u^(n-1) du over the quantile u, by quadrature in y = -log(1 - u) above 1/2
    (isf of a tiny tail probability stays exact) and in z = -log u below; past a tail probability of
    e^-300, the closed form E[(T - t)+] = (df + t^2) / (df - 1) pdf(t) - t sf(t), to first order."""
    t, end = stats.t(df), 300.0

    def excess(x):
        return (df + x * x) / (df - 1) * t.pdf(x) - x * t.sf(x)

    def upper(y):
        return t.isf(math.exp(-y)) * n * math.exp((n - 1) * math.log1p(-math.exp(-y)) - y)

    def lower(z):
        return t.ppf(math.exp(-z)) * n * math.exp(-n * z)

    peak = math.log(n)
    cuts = sorted({math.log(2), end, *(c for c in (peak - 4, peak, peak + 4, peak + 15, peak + 40) if math.log(2) < c < end)})
    total = sum(integrate.quad(upper, a, b, limit=500, epsabs=0, epsrel=1e-12)[0] for a, b in zip(cuts[:-1], cuts[1:]))
    total += sum(integrate.quad(lower, a, b, limit=500, epsabs=0, epsrel=1e-12)[0]
                 for a, b in zip([math.log(2), 5, 40], [5, 40, end]))
    return total + n * excess(t.isf(math.exp(-end)))


def test_the_order_statistics_reference_has_the_closed_form_of_two_student_t2():
    assert student_t_max(2.0, 2) == pytest.approx(math.pi / (2 * math.sqrt(2)), rel=1e-11)  # E|T1 - T2| / 2


@pytest.mark.parametrize("df", [1.2, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("n", [2, 3, 64, 4096, 100_000])
def test_heavy_values_reach_the_far_tail(df, n):
    """The state's and the prompt's E[max of n] against the quantile-scale integral. The prompt's grid
    used to stop at 1e5 scales: at df = 1.5 it left out 1.7% of this value at n = 1000 and 7.9% at 1e5,
    and the state's quadrature 3.6e-5 of it (n up to 1024 N feeds the compute multipliers). A prompt of
    states 1e-9 apart is one Student-t. Tolerances: the state's quadrature asks for 1e-10 (1e-15 measured;
    its lower tail taken as a power law's: as an upper bound it was 1.3e-8 off at df = 1.2, n = 2); the
    prompt's trapezoid grid is good to about 1e-7 (6e-8 to 1.3e-7 measured)."""
    reference = student_t_max(df, n)
    assert make_world("heavy", df=df).state_value(np.zeros(1), n)[0] == pytest.approx(reference, rel=1e-10)
    assert make_world("heavy", df=df, sigma0=1e-9).prompt_value(n) == pytest.approx(reference, rel=3e-7)


def test_bimodal_rollouts_carry_correct_flags_at_the_state_rate():
    world = make_world("bimodal")
    rng = np.random.default_rng(0)
    latents = np.full(200_000, 0.3)
    rewards, correct = world.sample_rewards(rng, latents)
    assert correct.dtype == bool and correct.mean() == pytest.approx(0.3, abs=0.005)
    assert rewards[correct].mean() == pytest.approx(1.0, abs=0.01)
    assert rewards[~correct].mean() == pytest.approx(0.0, abs=0.01)


def test_bounded_rewards_stay_in_the_unit_interval():
    world = make_world("bounded")
    rng = np.random.default_rng(0)
    rewards, _ = world.sample_rewards(rng, world.sample_states(rng, (100_000,)))
    assert rewards.min() >= 0.0 and rewards.max() <= 1.0
    assert world.prompt_value(10**4) < 1.0


@pytest.mark.parametrize("family, params, match", [
    ("cauchy", {}, "unknown world family"),
    ("gaussian", {"sigma2": 1.0}, "unknown parameter"),
    ("gaussian", {"sigma1": 0.0}, "sigma1 must be from 1e-100 to 1e[+]06, got 0.0"),
    ("heavy", {"sigma1": 1e-300}, "sigma1 must be from 1e-100"),  # its tails' integrals overflowed
    ("bimodal", {"p0": 1.5}, "p0"),
    ("discrete", {"levels": 1.0}, "levels"),
    ("gaussian", {"sigma0": float("nan")}, "finite"),
    ("heavy", {"df": 0.5}, "df must be > 1"),  # no mean, no finite best of n: quadrature crashed
    ("discrete", {"levels": 20000.0}, "levels must be an integer from 2 to 10000"),
])
def test_bad_world_parameters_are_refused(family, params, match):
    with pytest.raises(ValueError, match=match):
        make_world(family, **params)


def test_every_family_has_documented_defaults():
    assert set(FAMILY_PARAMS) == set(WORLDS)


def test_a_nearly_normal_heavy_world_has_the_normal_best_of_one_and_two():
    """df = 1e5: log F underflows to -inf at the tail grid's far end, and F^(n - 1) at n = 1 was
    0 x -inf = NaN (with a warning). The world is then N(0, 1) + N(0, 1) to within 1e-5:
    the best of one is the mean 0, the best of two sd / sqrt(pi) with sd = sqrt(2)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        world = make_world("heavy", df=1e5)
        one, two = world.prompt_value(1), world.prompt_value(2)
    assert one == pytest.approx(0.0, abs=1e-9)
    assert two == pytest.approx(math.sqrt(2.0 / math.pi), abs=1e-4)
