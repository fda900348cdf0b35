"""Simulated worlds: their ground truth against Monte Carlo and closed forms."""

import numpy as np
import pytest
from scipy import special

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
    ("gaussian", {"sigma1": 0.0}, "sigma1 must be > 0"),
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
