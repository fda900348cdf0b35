"""The search policies: exact budgets, the reference algorithm's steps, and the options."""

import numpy as np
import pytest

from pipeline.config import AdaptiveConfig, ExpectedMaxRule, PredictionBudget, SearchConfig, StateSelection
from pipeline.episodes import WorldSource, run_episodes
from pipeline.policies import POLICIES, AdaptiveSLG, BestOfN, Oracle, ScalingLawGuided, policy_class
from pipeline.policy import NO_NODE, ROOT, BudgetExceededError, EpisodeLedger, Request, Rollouts
from pipeline.tail import fit_tail
from pipeline.worlds import WORLDS, make_world


class RecordingSource(WorldSource):
    """A world source that keeps every request it answered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests = []
        self.results = []

    def draw(self, request):
        self.requests.append(request)
        result = super().draw(request)
        self.results.append(result)
        return result


def play(method, budget, batch=64, family="gaussian", config=None, seed=0, source_cls=RecordingSource):
    source = source_cls(make_world(family), batch, np.random.default_rng(seed))
    policy = policy_class(method)(budget, batch, config or SearchConfig(), rng=np.random.default_rng(seed + 1),
                                  true_value=source.true_value)
    ledger = run_episodes(policy, source)
    return policy, source, ledger


@pytest.mark.parametrize("method", sorted(POLICIES))
@pytest.mark.parametrize("family", sorted(WORLDS))
@pytest.mark.parametrize("budget", [1, 7, 50, 100, 333, 1000])
def test_every_policy_spends_exactly_its_budget(method, family, budget):
    policy, source, ledger = play(method, budget, batch=16, family=family)
    assert (ledger.spent == budget).all()
    drawn = sum(np.isfinite(r.rewards).sum(axis=1) for r in source.results)
    assert (drawn == budget).all()
    assert np.isfinite(ledger.best_reward).all()


def test_slg_follows_the_reference_steps():
    policy, source, ledger = play("slg", 1000, batch=32)
    m, k = 65, 8
    root, *estimates, exploit = source.requests
    assert (root.node == ROOT).all() and (root.count == m).all()
    assert len(estimates) == k and all((e.count == m).all() for e in estimates)
    # States are the K highest-reward root rollouts.
    root_rewards = source.results[0].rewards
    chosen = np.stack([e.node for e in estimates], axis=1)
    expected = np.argsort(-root_rewards, axis=1, kind="stable")[:, :k]
    assert (chosen == expected).all()
    # The exploit node is the argmax of mu + sigma E(N) over the root and the states.
    assert (exploit.count == 1000 - (k + 1) * m).all()
    for b in range(32):
        samples = [root_rewards[b]] + [source.results[1 + j].rewards[b] for j in range(k)]
        values = [fit_tail(s).mu + fit_tail(s).sigma * 3.2414357691334406 for s in samples]
        nodes = [ROOT] + list(chosen[b])
        assert exploit.node[b] == nodes[int(np.argmax(values))] == policy.selected[b]
    # The answer is the best rollout of all phases.
    everything = np.concatenate([r.rewards for r in source.results], axis=1)
    assert np.allclose(ledger.best_reward, np.nanmax(everything, axis=1))


def test_oracle_shares_slg_rollouts_and_picks_the_true_best():
    slg, slg_source, _ = play("slg", 500, batch=40, seed=3)
    oracle, oracle_source, _ = play("oracle", 500, batch=40, seed=3)
    for a, b in zip(slg_source.results[:-1], oracle_source.results[:-1]):
        assert np.array_equal(a.rewards, b.rewards, equal_nan=True)
    states = np.stack([r.node for r in oracle_source.requests[1:-1]], axis=1)
    nodes = np.concatenate([np.full((40, 1), ROOT), states], axis=1)
    truth = oracle_source.true_value(nodes, np.full(40, 500))
    assert (oracle.selected == nodes[np.arange(40), truth.argmax(axis=1)]).all()


def test_oracle_refuses_to_run_without_true_values():
    with pytest.raises(ValueError, match="true state values"):
        Oracle(100, 4)


def test_root_can_be_kept_out_of_the_competition():
    config = SearchConfig(root_competes=False)
    policy, _, _ = play("slg", 1000, batch=200, config=config)
    assert (policy.selected != ROOT).all()
    policy, _, _ = play("slg", 1000, batch=200)
    assert (policy.selected == ROOT).any()  # with the root in, it sometimes wins


def test_random_state_selection_differs_from_top_reward():
    config = SearchConfig(state_selection=StateSelection.random)
    _, source, _ = play("slg", 1000, batch=64, config=config)
    chosen = np.stack([r.node for r in source.requests[1:-1]], axis=1)
    top = np.argsort(-source.results[0].rewards, axis=1)[:, :8]
    assert not (np.sort(chosen, axis=1) == np.sort(top, axis=1)).all()


def test_explicit_schedule_and_remaining_budget_horizon():
    config = SearchConfig(rollouts_per_node=10, num_states=3, prediction_budget=PredictionBudget.remaining,
                          expected_max_rule=ExpectedMaxRule.quantile)
    _, source, ledger = play("slg", 100, batch=8, config=config)
    assert [int(r.count[0]) for r in source.requests] == [10, 10, 10, 10, 60]
    assert (ledger.spent == 100).all()


def test_overspending_schedule_is_refused_before_any_rollout():
    with pytest.raises(ValueError, match="more than the budget"):
        ScalingLawGuided(100, 4, SearchConfig(rollouts_per_node=30, num_states=4))


def test_states_come_only_from_rollouts_that_can_branch():
    class ShortRollouts(RecordingSource):
        def draw(self, request):
            result = super().draw(request)
            # Root rollouts with an odd index are shorter than T tokens.
            can = result.can_branch & (np.arange(result.rewards.shape[1]) % 2 == 0)[None, :]
            return Rollouts(result.rewards, can, result.correct)

    _, source, ledger = play("slg", 1000, batch=16, source_cls=ShortRollouts)
    for request in source.requests[1:-1]:
        assert (request.node % 2 == 0).all()
    assert (ledger.spent == 1000).all()


def test_too_few_branchable_rollouts_leave_slots_empty_and_the_budget_still_spent():
    class FewBranch(RecordingSource):
        def draw(self, request):
            result = super().draw(request)
            can = result.can_branch & (np.arange(result.rewards.shape[1]) < 3)[None, :]
            return Rollouts(result.rewards, can, result.correct)

    for method in ("slg", "slg_adaptive", "oracle"):
        policy, source, ledger = play(method, 1000, batch=8, source_cls=FewBranch)
        assert (ledger.spent == 1000).all(), method
        assert all(((r.node == NO_NODE) | (r.node < 3)).all() for r in source.requests[1:-1]), method


def test_adaptive_halves_candidates_and_exploits_the_winner():
    config = SearchConfig(adaptive=AdaptiveConfig(num_candidates=8, screening_rollouts=10))
    policy, source, ledger = play("slg_adaptive", 1000, batch=16, config=config)
    root = source.requests[0]
    assert (root.count == 250).all()  # root_fraction 0.25
    granted = [int((r.count > 0).sum(axis=None)) for r in source.requests]
    assert granted[1:9] == [16] * 8  # 8 screened states, one request each
    exploit = source.requests[-1]
    assert (exploit.node == policy.selected).all()
    assert (ledger.spent == 1000).all()


def test_policies_are_deterministic_given_seeds():
    for method in sorted(POLICIES):
        a = play(method, 300, batch=8, seed=9)[2].best_reward
        b = play(method, 300, batch=8, seed=9)[2].best_reward
        assert np.array_equal(a, b)


def test_one_episode_batches_give_the_same_decisions_as_large_batches():
    """The Ray driver runs B = 1 per prompt; replay runs thousands. Same rewards, same choices."""
    _, big_source, _ = play("slg_adaptive", 500, batch=6, seed=4)
    batch_policy, _, _ = play("slg_adaptive", 500, batch=6, seed=4)
    for b in range(6):
        class Replayed(RecordingSource):
            def draw(self, request, _b=b, _step=[0]):
                result = big_source.results[_step[0]]
                _step[0] += 1
                keep = slice(_b, _b + 1)
                correct = None if result.correct is None else result.correct[keep]
                return Rollouts(result.rewards[keep][:, : int(request.count[0])], result.can_branch[keep], correct)

        policy = AdaptiveSLG(500, 1, SearchConfig())
        run_episodes(policy, Replayed(make_world("gaussian"), 1, np.random.default_rng(0)))
        assert policy.selected[0] == batch_policy.selected[b]


def test_ledger_refuses_a_policy_that_overspends():
    ledger = EpisodeLedger(budget=10, batch_size=2)
    ledger.charge([Request.uniform(ROOT, 6, 2)])
    with pytest.raises(BudgetExceededError, match="budget is 10"):
        ledger.charge([Request.uniform(ROOT, 5, 2)])


def test_bon_is_one_round_from_the_prompt():
    policy = BestOfN(50, 3)
    (request,) = policy.plan()
    assert (request.node == ROOT).all() and (request.count == 50).all()
    policy.observe([Rollouts(np.zeros((3, 50)), np.ones((3, 50), bool))])
    assert policy.done


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown method 'beam'"):
        policy_class("beam")
