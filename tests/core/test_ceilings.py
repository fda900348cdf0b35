"""The best of draws from several arms and the two ceilings, against brute-force enumeration."""

import itertools

import numpy as np
import pytest

from pipeline.offline.ceilings import PromptArms
from pipeline.offline.episodes import BankPrompt
from pipeline.stats.arms import allocate_draws, common_support, expected_best


def enumerated_best(pools, counts, best=-np.inf) -> float:
    """E[max(best, draws)] by listing every equally likely outcome of the draws (independent of the CDF formula)."""
    lists = [list(p) for p, n in zip(pools, counts) for _ in range(n)]
    if not lists:
        return best
    outcomes = list(itertools.product(*lists))
    return float(np.mean([max(max(o), best) for o in outcomes]))


@pytest.mark.parametrize("seed", range(40))
def test_the_allocation_is_the_brute_force_optimum_and_its_value_exact(seed):
    rng = np.random.default_rng(seed)
    pools = [np.round(rng.normal(size=rng.integers(1, 4)), 1) for _ in range(rng.integers(1, 4))]
    total = int(rng.integers(1, 5))
    best = float(rng.choice([-np.inf, np.round(rng.normal(), 2)]))
    values, cdfs = common_support(pools)
    every = [c for c in itertools.product(range(total + 1), repeat=len(pools)) if sum(c) == total]
    optimum = max(enumerated_best(pools, c, best) for c in every)
    counts = allocate_draws(values, cdfs, total, best)
    assert counts.sum() == total
    assert expected_best(values, cdfs, counts, best) == pytest.approx(enumerated_best(pools, counts, best), abs=1e-12)
    assert enumerated_best(pools, counts, best) == pytest.approx(optimum, abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_the_allocation_is_optimal_with_the_best_so_far_on_one_of_the_rewards(seed):
    """Paid discovery's case: the best in hand is one of the arms' own rewards (a support value, where
    the support starts), not a value between them."""
    rng = np.random.default_rng(100 + seed)
    pools = [np.round(rng.normal(size=rng.integers(1, 4)), 1) for _ in range(rng.integers(1, 4))]
    total = int(rng.integers(1, 5))
    best = float(rng.choice(np.concatenate(pools)))
    values, cdfs = common_support(pools)
    assert best in values
    every = [c for c in itertools.product(range(total + 1), repeat=len(pools)) if sum(c) == total]
    counts = allocate_draws(values, cdfs, total, best)
    assert counts.sum() == total
    assert expected_best(values, cdfs, counts, best) == pytest.approx(enumerated_best(pools, counts, best), abs=1e-12)
    assert enumerated_best(pools, counts, best) == pytest.approx(max(enumerated_best(pools, c, best) for c in every), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_single_draw_moves_reach_the_optimum_from_a_coarse_greedy_start(seed):
    """With ``steps=1`` the greedy phase puts all the draws on one arm; the moves must then find the
    brute-force optimum, which here splits the draws (a safe arm and a risky one)."""
    rng = np.random.default_rng(seed)
    pools = [np.round(rng.normal(0.0, 0.1, 3), 2), np.round(rng.normal(-0.5, 1.5, 3), 2), np.round(rng.normal(size=2), 2)]
    total = 5
    values, cdfs = common_support(pools)
    every = [c for c in itertools.product(range(total + 1), repeat=len(pools)) if sum(c) == total]
    optimum = max(enumerated_best(pools, c) for c in every)
    counts = allocate_draws(values, cdfs, total, steps=1)
    assert enumerated_best(pools, counts) == pytest.approx(optimum, abs=1e-12)


def brute_clairvoyant(states, weights, budget) -> float:
    """The best allocation of ``budget`` draws among the prompt (a state by weight, then a reward) and
    each state, every allocation and every outcome enumerated (weights as whole-number multiplicities)."""
    size = int(np.lcm.reduce([len(s) for s in states]))
    # reward r of state i repeated in proportion to w_i / |pool_i|: one uniform pick is one prompt draw
    prompt_pool = [r for w, s in zip(weights, states) for r in s for _ in range(int(round(4 * w * size / len(s))))]
    arms = [prompt_pool] + [list(s) for s in states]
    every = [c for c in itertools.product(range(budget + 1), repeat=len(arms)) if sum(c) == budget]
    return max(enumerated_best(arms, c) for c in every)


def test_the_clairvoyant_ceiling_is_the_best_allocation_over_the_prompt_and_its_merged_states():
    # four sampled states, two with the same prefix: merged, that state weighs 1/2 and pools both lists
    bank = BankPrompt("p", [[0.1, 0.9], [0.5, 0.6], [0.2, 0.3], [0.0, 1.0]], state_texts=["a", "b", "c", "a"])
    assert bank.num_states == 3 and bank.state_weights.tolist() == [0.5, 0.25, 0.25]
    merged = [list(s) for s in bank.state_rewards]
    assert sorted(merged[0]) == [0.0, 0.1, 0.9, 1.0]
    for budget in (1, 2, 3):
        assert PromptArms(bank).clairvoyant(budget) == pytest.approx(
            brute_clairvoyant(merged, bank.state_weights, budget), abs=1e-12)


def test_paid_discovery_sits_between_best_of_n_and_the_clairvoyant_ceiling():
    rng = np.random.default_rng(0)
    states = [rng.normal(mu, 1.0, 64) for mu in (0.0, 0.0, 1.5, -1.0)]
    bank = BankPrompt("p", states)
    arms = PromptArms(bank)
    for budget in (8, 32):
        bon = float(bank.bon_value(budget))
        paid = arms.paid_discovery(budget, np.random.default_rng(1), draws=200)
        assert bon - 0.02 < paid.mean < arms.clairvoyant(budget)  # 0.02: Monte Carlo error of 200 discoveries


# three states of four rewards: a safe one, a risky one (the best tail, the worst mean), one between
SMALL_STATES = [[0.5, 0.55, 0.6, 0.65], [-1.0, -0.5, 0.0, 1.5], [0.0, 0.2, 0.4, 0.9]]


def enumerated_paid_discovery(prompt: BankPrompt, budget: int) -> tuple[float, float]:
    """The paid-discovery ceiling exactly, and the variance of one discovery's value: every sequence of
    the N / 4 prompt draws (a state by weight, then one of its rewards) listed with its probability; each
    reveals its states and its best, and the rest is allocated as the ceiling allocates it."""
    arms = PromptArms(prompt)
    found = max(1, round(budget / 4))
    outcomes = [(w / len(pool), state, r) for state, (w, pool) in enumerate(zip(prompt.state_weights, prompt.state_rewards))
                for r in pool]
    mean = square = 0.0
    for draws in itertools.product(outcomes, repeat=found):
        chance, best = float(np.prod([p for p, _, _ in draws])), max(r for _, _, r in draws)
        cdfs = np.vstack([arms.prompt_cdf, arms.state_cdfs[sorted({state for _, state, _ in draws})]])
        value = expected_best(arms.values, cdfs, allocate_draws(arms.values, cdfs, budget - found, best), best)
        mean, square = mean + chance * value, square + chance * value ** 2
    return mean, square - mean ** 2


@pytest.mark.parametrize("budget", [4, 8])
def test_paid_discovery_estimates_the_enumerated_ceiling_within_its_interval(budget):
    """Over 300 seeds of 64 discoveries: the estimates centre on the exact ceiling (within 4 standard
    errors of their average) and their 95% intervals cover it 88-99% of the time (a normal interval
    on 64 skewed values; 300 seeds put the coverage's own sd at 0.015)."""
    prompt = BankPrompt("p", SMALL_STATES)
    exact, _ = enumerated_paid_discovery(prompt, budget)
    estimates = [PromptArms(prompt).paid_discovery(budget, np.random.default_rng(seed)) for seed in range(300)]
    means, sds = np.array([e.mean for e in estimates]), np.sqrt([e.variance for e in estimates])
    assert abs(means.mean() - exact) < 4 * means.std() / np.sqrt(300)
    assert 0.88 <= np.mean(np.abs(means - exact) < 1.96 * sds) <= 0.99


def test_paid_discovery_is_sharper_than_a_plain_mean_of_its_discoveries(monkeypatch):
    """Two states (one wide, one narrow and higher), N = 16: over 200 seeds the estimate's spread is
    below 0.75 times that of the plain mean of the same discoveries (measured 0.49: what giving all the
    rest to the prompt would be worth after a discovery moves with what sharing it is worth)."""
    from pipeline.offline import ceilings
    from pipeline.stats.monte_carlo import control_variate_mean

    plain = []

    def recording(values, control, expected):
        plain.append(float(np.mean(values)))
        return control_variate_mean(values, control, expected)

    monkeypatch.setattr(ceilings, "control_variate_mean", recording)
    rng = np.random.default_rng(0)
    rng.normal(size=200)  # the states the measurement in the docstring used
    prompt = BankPrompt("q", [rng.normal(0.0, 1.0, 100).tolist(), rng.normal(0.5, 0.3, 100).tolist()])
    means = [PromptArms(prompt).paid_discovery(16, np.random.default_rng(seed)).mean for seed in range(200)]
    assert np.std(means) < 0.75 * np.std(plain)


def test_paid_discovery_without_draws_left_is_best_of_n_exactly():
    """At N = 1 the discovery's one prompt draw is the budget: its value is best-of-N's own, exactly,
    with no Monte Carlo error."""
    prompt = BankPrompt("p", SMALL_STATES)
    estimate = PromptArms(prompt).paid_discovery(1, np.random.default_rng(0))
    assert estimate.mean == pytest.approx(float(prompt.bon_value(1)), abs=1e-12)
    assert estimate.variance == pytest.approx(0.0, abs=1e-20)


def test_a_control_variate_mean_is_the_known_expectation_plus_the_mean_difference():
    """Against its definition on random values; a control equal to the values leaves the known
    expectation and no error; a zero control the plain mean and s^2 / n."""
    from pipeline.stats.monte_carlo import control_variate_mean

    rng = np.random.default_rng(3)
    control = rng.exponential(size=41)
    values = 2.0 * control + rng.normal(0.0, 0.5, 41)
    estimate = control_variate_mean(values, control, 1.0)
    assert estimate.mean == pytest.approx(1.0 + (values - control).mean(), abs=1e-12)
    assert estimate.variance == pytest.approx((values - control).var(ddof=1) / 41, rel=1e-12)
    exact = control_variate_mean(control, control, 1.0)
    assert exact.mean == 1.0 and exact.variance == 0.0
    plain = control_variate_mean(values, np.zeros(41), 0.0)
    assert plain.mean == pytest.approx(values.mean(), abs=1e-12)
    assert plain.variance == pytest.approx(values.var(ddof=1) / 41, rel=1e-12)


def test_paid_discovery_never_reads_below_best_of_n():
    """Giving all the rest to the prompt is one allocation the ceiling may choose, and its expectation
    over discoveries is best-of-N's exact value, so the estimate is best-of-N's value plus a gain that
    is never negative. On one state (where no share beats the prompt) it is best-of-N's value itself,
    with no error, whatever its 64 discoveries drew, a top reward of one in 4000 included (a plain
    average of the same discoveries is off by their noise: on toy_t8_temp07 at N = 512 the control
    variate of the discoveries' best reward, fitted, read 0.99x of best-of-N there, beyond its interval)."""
    rewards = np.random.default_rng(0).normal(0.0, 0.3, 4000)
    rewards[0] = 5.0
    prompt = BankPrompt("p", [rewards.tolist()])
    for budget in (8, 64):
        estimate = PromptArms(prompt).paid_discovery(budget, np.random.default_rng(1))
        assert estimate.mean == pytest.approx(float(prompt.bon_value(budget)), abs=1e-9) and estimate.variance < 1e-18
    for seed in range(3):  # and with states that differ
        rng = np.random.default_rng(seed)
        prompt = BankPrompt("q", [rng.normal(mu, 0.3, 50).tolist() for mu in (0.0, 0.2, -0.3)])
        for budget in (8, 64):
            assert PromptArms(prompt).paid_discovery(budget, rng).mean >= float(prompt.bon_value(budget)) - 1e-12


def test_the_prompt_weights_of_a_bank_follow_its_states_by_weight_then_reward():
    """BoN's exact value on a bank whose states differ in size and share prefixes equals enumeration of
    (state by weight, then a reward of its pool)."""
    states, texts = [[0.0, 1.0, 0.4], [0.7], [0.2, 0.9], [0.5]], ["x", "y", "z", "x"]
    bank = BankPrompt("p", states, state_texts=texts)
    pools = {"x": [0.0, 1.0, 0.4, 0.5], "y": [0.7], "z": [0.2, 0.9]}
    draw = [(0.5, pools["x"]), (0.25, pools["y"]), (0.25, pools["z"])]
    outcomes = [(w / len(pool), r) for w, pool in draw for r in pool]  # one draw: its probability and reward
    for n in (1, 2, 3):
        exact = sum(np.prod([p for p, _ in combo]) * max(r for _, r in combo)
                    for combo in itertools.product(outcomes, repeat=n))
        assert float(bank.bon_value(n)) == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("family, tolerance", [("discrete", 1e-12), ("gaussian", 0.01), ("bounded", 0.001)])
def test_a_worlds_clairvoyant_ceiling_at_one_draw_is_its_best_arms_mean(family, tolerance):
    """With one draw the best allocation takes the arm of highest mean: the world's own exact values
    (closed forms and quadrature, not the grid of the ceiling) say which and how much. Tolerance: the
    grid's step (a thousandth of its span) bounds the error of a continuous world's expected maximum."""
    from pipeline.offline.ceilings import WorldArms
    from pipeline.offline.worlds import make_world

    world = make_world(family)
    arms = WorldArms(world, np.random.default_rng(4))
    ceiling = arms.clairvoyant(1)
    assert len(arms.arms) == 1  # one draw can reveal one state
    exact = max(world.prompt_value(1), float(world.state_value(arms.arms, 1).max()))
    assert ceiling == pytest.approx(exact, abs=tolerance)


def test_a_worlds_clairvoyant_ceiling_at_two_draws_is_the_best_of_every_allocation_in_closed_form():
    """Gaussian: two free states and the prompt, all normal. Two draws from one arm: mu + sigma / sqrt(pi);
    one from each of two: Clark's E[max(X, Y)] = mu1 Phi(a) + mu2 Phi(-a) + t phi(a), t^2 = s1^2 + s2^2,
    a = (mu1 - mu2) / t. Tolerance: the grid's step, as above."""
    from scipy import stats

    from pipeline.offline.ceilings import WorldArms
    from pipeline.offline.worlds import make_world

    world = make_world("gaussian", sigma1=0.5)
    for seed in range(5):
        arms = WorldArms(world, np.random.default_rng(seed))
        ceiling = arms.clairvoyant(2)
        assert len(arms.arms) == 2
        normals = [(0.0, float(np.hypot(1.0, 0.5)))] + [(float(m), 0.5) for m in arms.arms]  # the prompt, the states

        def both(first, second):
            (m1, s1), (m2, s2) = first, second
            t = np.hypot(s1, s2)
            return m1 * stats.norm.cdf((m1 - m2) / t) + m2 * stats.norm.cdf((m2 - m1) / t) + t * stats.norm.pdf((m1 - m2) / t)

        exact = max([m + s / np.sqrt(np.pi) for m, s in normals]
                    + [both(normals[i], normals[j]) for i, j in itertools.combinations(range(3), 2)])
        assert ceiling == pytest.approx(exact, abs=0.01)


def test_a_worlds_clairvoyant_ceiling_is_above_paid_discovery_and_the_methods_at_large_budgets():
    """N free states (as many as N rollouts can reveal) against N / 4 paid for: the clairvoyant ceiling
    is the higher, and above what slg_adaptive and the oracle reach (16 sampled states fell below both
    at N = 256 on gaussian)."""
    from pipeline.offline.ceilings import world_ceilings
    from pipeline.offline.replay import replay
    from pipeline.offline.worlds import make_world

    world = make_world("gaussian")
    ceilings = world_ceilings(world, [64, 256], num_prompts=16)
    played = {(r.method, r.budget): r.mean_best_reward
              for r in replay(world, ["slg_adaptive", "oracle"], [64, 256], repeats=10, num_prompts=40, workers=1)}
    for budget in (64, 256):
        assert ceilings[budget]["clairvoyant"].mean > ceilings[budget]["paid_discovery"].mean
        assert ceilings[budget]["clairvoyant"].mean > max(played[(m, budget)] for m in ("slg_adaptive", "oracle"))


def test_a_worlds_ceilings_are_means_over_fresh_prompts_with_their_monte_carlo_error():
    """``world_ceilings``: the clairvoyant ceiling is the plain mean of its prompts' ceilings, with
    variance sd^2 / P (recomputed here from the same streams); paid discovery's control-variate mean
    lies within the joint 95% interval of it and the plain mean of 2000 more discoveries (an
    independent, far sharper estimate: its sd is a sixth of that of 64 discoveries)."""
    from pipeline.offline.ceilings import WorldArms, world_ceilings
    from pipeline.offline.worlds import make_world

    world, budget = make_world("gaussian"), 16
    found = world_ceilings(world, [budget], num_prompts=64, seed=4)[budget]
    rng = np.random.default_rng([4, budget])
    arms = [WorldArms(world, rng) for _ in range(64)]
    clairvoyant = np.array([a.clairvoyant(budget) for a in arms])
    assert found["clairvoyant"].mean == pytest.approx(clairvoyant.mean(), abs=1e-12)
    assert found["clairvoyant"].variance == pytest.approx(clairvoyant.var(ddof=1) / 64, rel=1e-12)
    many = WorldArms(world, np.random.default_rng(99))
    plain = np.array([many.paid_discovery(budget) for _ in range(2000)])
    paid = found["paid_discovery"]
    assert abs(paid.mean - plain.mean()) < 1.96 * np.sqrt(paid.variance + plain.var(ddof=1) / 2000)


@pytest.mark.parametrize("family, budget", [("heavy", 10**5), ("gaussian", 10**6)])
def test_a_worlds_clairvoyant_ceiling_holds_the_far_tail_of_many_draws(family, budget):
    """At least what each arm alone gives (the prompt's best-of-N, a state's V_N: the world's exact
    values, by quadrature), where the best of N draws lies far beyond any sample of a few thousand:
    a support that ended there put the heavy world's ceiling at N = 10^5 below its own best-of-N
    (59 against 65). No tolerance: the grid's step rounds a best up, never down."""
    from pipeline.offline.ceilings import WorldArms
    from pipeline.offline.worlds import make_world

    world = make_world(family)
    arms = WorldArms(world, np.random.default_rng(5))
    ceiling = arms.clairvoyant(budget)
    assert ceiling >= max(world.prompt_value(budget), float(world.state_value(arms.arms, budget).max()))


def test_a_worlds_paid_discovery_keeps_the_best_reward_it_drew():
    """Gaussian, N = 2: one prompt draw reveals a state m and its reward r, and the last draw goes to
    the arm (the prompt, N(0, sqrt 2), or the state, N(m, 1)) of highest E[max(r, X)] = r + (mu - r)
    Phi(d) + s phi(d), d = (mu - r) / s: the discovery's reward counts (redrawn here from a copy of
    the generator, in the order the ceiling draws: the state, then its reward)."""
    import copy

    from scipy import stats

    from pipeline.offline.ceilings import WorldArms
    from pipeline.offline.worlds import make_world

    world = make_world("gaussian")
    for seed in range(6):
        rng = np.random.default_rng(seed)
        twin = copy.deepcopy(rng)
        ceiling = WorldArms(world, rng).paid_discovery(2)
        latent = world.sample_states(twin, (1,))
        reward = float(world.sample_rewards(twin, latent)[0][0])

        def with_one_more(mu, sd, best):
            d = (mu - best) / sd
            return best + (mu - best) * stats.norm.cdf(d) + sd * stats.norm.pdf(d)

        exact = max(with_one_more(0.0, np.sqrt(2.0), reward), with_one_more(float(latent[0]), 1.0, reward))
        assert ceiling == pytest.approx(exact, abs=0.01)


def test_a_worlds_state_cdfs_are_its_rewards_distribution():
    from pipeline.offline.worlds import WORLDS, make_world

    rng = np.random.default_rng(0)
    for family in sorted(WORLDS):
        world = make_world(family)
        latents = world.sample_states(rng, (2,))
        rewards, _ = world.sample_rewards(rng, np.repeat(latents[:, None], 100_000, axis=1))
        x = np.quantile(rewards, [0.1, 0.5, 0.9])
        empirical = (rewards[:, :, None] <= x[None, None, :]).mean(axis=1)
        # 100,000 draws: the sd of an empirical proportion is at most 0.0016
        assert np.abs(empirical - world.state_cdf(latents, x)).max() < 0.007, family


@pytest.mark.parametrize("budget", [1, 16, 200])
def test_a_large_support_is_a_grid_whose_ceiling_is_above_the_exact_one_by_less_than_a_step(budget, monkeypatch):
    """Three states of 3000 distinct rewards each: the exact ceilings (the whole support, MAX_SUPPORT
    raised) against the grid of 512 points; rounding rewards up to the grid can only raise a best,
    and by less than one step."""
    from pipeline.offline import ceilings

    rng = np.random.default_rng(budget)
    prompt = BankPrompt("big", [rng.normal(mean, 1.0, 3000).tolist() for mean in (0.0, 0.5, 1.0)])
    monkeypatch.setattr(ceilings, "MAX_SUPPORT", 10**6)
    exact = PromptArms(prompt)
    monkeypatch.setattr(ceilings, "MAX_SUPPORT", 512)
    grid = PromptArms(prompt)
    step = (prompt.rewards.max() - prompt.rewards.min()) / 511
    assert len(exact.values) == 9000 and len(grid.values) == 512
    assert exact.clairvoyant(budget) <= grid.clairvoyant(budget) <= exact.clairvoyant(budget) + step
    assert grid.clairvoyant(budget) - exact.clairvoyant(budget) > step / 100  # a grid, not the support
