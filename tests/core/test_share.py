"""slg_share: where rewards repeat and prefixes are scored, the best-prefix state shares the budget with
fresh prompt draws; elsewhere it is slg_adaptive, request for request; the budget is spent exactly."""

import numpy as np
import pytest

from pipeline.offline.episodes import BankPrompt, BankSource, WorldSource, run_episodes
from pipeline.offline.worlds import make_world
from pipeline.search.adaptive import AdaptiveSLG
from pipeline.search.bon import BestOfN
from pipeline.search.config import SearchConfig, ShareConfig
from pipeline.search.protocol import NO_NODE, ROOT
from pipeline.search.share import SharedSLG


def tied_bank(scores=(0.0, 2.0, 0.1), texts=("a", "b", "c")) -> BankPrompt:
    """Three states with few reward levels; state "b" (a quarter of the draws) is the best, and its
    prefix scores best by default."""
    states = [[0.0, 0.1, 0.1, 0.2], [0.5, 0.9, 0.9, 1.0], [0.0, 0.0, 0.2, 0.3], [0.0, 0.1, 0.1, 0.2]]
    return BankPrompt("p", states, state_texts=[texts[0], texts[1], texts[2], texts[0]],
                      state_scores=[scores[0], scores[1], scores[2], scores[0]])


class Recording(BankSource):
    """A bank source that keeps every request: (node, count) per episode."""

    def __init__(self, *args):
        super().__init__(*args)
        self.requests = []

    def draw(self, request):
        self.requests.append((request.node.copy(), request.count.copy()))
        return super().draw(request)


def play(policy_class, source, budget, config=None, seed=1):
    policy = policy_class(budget, source.batch_size, config or SearchConfig(), rng=np.random.default_rng(seed))
    return policy, run_episodes(policy, source)


@pytest.mark.parametrize("budget", [1, 5, 11, 12, 13, 16, 17, 31, 32, 64, 100, 127, 256])
def test_the_budget_is_spent_exactly(budget):
    for source in (Recording(tied_bank(), 64, np.random.default_rng(budget)),
                   WorldSource(make_world("discrete"), 64, np.random.default_rng(budget), np.random.default_rng(7)),
                   WorldSource(make_world("gaussian"), 64, np.random.default_rng(budget), np.random.default_rng(7))):
        _, ledger = play(SharedSLG, source, budget)
        assert (ledger.spent == budget).all()


def test_where_a_prefix_scores_clearly_best_it_gets_its_share_and_the_prompt_the_rest():
    budget, batch = 64, 400
    source = Recording(tied_bank(), batch, np.random.default_rng(0))
    policy, _ = play(SharedSLG, source, budget)
    share = ShareConfig()
    to_state = round(share.state_share * (1 - share.root_fraction) * budget)  # 24 of 64
    state_rollouts = np.zeros(batch, dtype=int)
    prompt_rollouts = np.zeros(batch, dtype=int)
    for node, count in source.requests:
        state_rollouts += np.where(node >= 0, count, 0)
        prompt_rollouts += np.where(node == ROOT, count, 0)
    shared = policy.selected != ROOT
    assert shared.mean() > 0.9  # state "b" is revealed (a quarter of the draws) and its prefix gap is large
    assert (state_rollouts[shared] == to_state).all() and (prompt_rollouts[shared] == budget - to_state).all()
    # the state shared with is the one with the best prefix: its rollouts come from b's pool
    assert (policy.selected[shared] >= 0).all()


def test_sharing_pays_on_a_bank_where_the_best_state_is_rare():
    budget, batch = 32, 2000
    bank = tied_bank()
    _, shared = play(SharedSLG, BankSource(bank, batch, np.random.default_rng(3)), budget)
    _, bon = play(BestOfN, BankSource(bank, batch, np.random.default_rng(3)), budget)
    # state b reaches 1.0 with chance 1/4 a draw, the prompt 1/16: 12 more draws from b beat bon clearly
    difference = shared.best_reward - bon.best_reward
    assert difference.mean() > 3 * difference.std() / np.sqrt(batch)


def test_without_a_clear_prefix_gap_the_rest_is_best_of_n():
    source = Recording(tied_bank(scores=(0.0, 0.01, 0.0)), 200, np.random.default_rng(0))
    policy, _ = play(SharedSLG, source, 64)
    assert (policy.selected == ROOT).all()
    assert all((node[count > 0] == ROOT).all() for node, count in source.requests)


@pytest.mark.parametrize("family", ["gaussian", "bimodal"])
def test_with_continuous_rewards_it_is_slg_adaptive_request_for_request(family):
    world = make_world(family)
    runs = []
    for cls in (SharedSLG, AdaptiveSLG):
        source = WorldSource(world, 300, np.random.default_rng(5), np.random.default_rng(6))
        policy, ledger = play(cls, source, 256)
        runs.append((policy.selected, ledger.best_reward))
    assert (runs[0][0] == runs[1][0]).all() and (runs[0][1] == runs[1][1]).all()


def test_without_prefix_scores_it_is_slg_adaptive():
    bank = BankPrompt("p", tied_bank().state_rewards)  # the same pools, no prefixes and no scores
    runs = []
    for cls in (SharedSLG, AdaptiveSLG):
        policy, ledger = play(cls, BankSource(bank, 300, np.random.default_rng(5)), 64)
        runs.append((policy.selected.copy(), ledger.best_reward.copy()))
    assert (runs[0][0] == runs[1][0]).all() and (runs[0][1] == runs[1][1]).all()


def test_below_twelve_it_is_best_of_n_draw_for_draw():
    for budget in range(1, 12):
        a = play(SharedSLG, BankSource(tied_bank(), 50, np.random.default_rng(budget)), budget)[1]
        b = play(BestOfN, BankSource(tied_bank(), 50, np.random.default_rng(budget)), budget)[1]
        assert (a.best_reward == b.best_reward).all()


@pytest.mark.parametrize("overrides, match", [
    ({"state_share": 1.5}, "search.share.state_share"),
    ({"root_fraction": -0.1}, "search.share.root_fraction"),
    ({"prefix_gap": float("nan")}, "search.share.prefix_gap"),
])
def test_bad_share_settings_are_refused_naming_the_key(overrides, match):
    from pipeline.search.config import validate_search_config

    with pytest.raises(ValueError, match=match):
        validate_search_config(SearchConfig(share=ShareConfig(**overrides)), [64])


def test_no_state_is_shared_with_where_no_rollout_could_branch():
    from pipeline.search.protocol import Rollouts

    policy = SharedSLG(64, 2, SearchConfig())
    root = Rollouts(np.array([[0.1, 0.1, 0.2], [0.1, 0.1, 0.2]]), np.zeros((2, 3), bool), None,
                    np.full((2, 3), -1), np.full((2, 3), np.nan))
    assert (policy._best_prefix_state(root, np.array([True, True])) == NO_NODE).all()


def test_a_dropped_score_in_the_root_does_not_make_it_overspend():
    """A NaN reward (a dropped non-finite score) is a rollout spent all the same."""
    class DropsSome(BankSource):
        def draw(self, request):
            out = super().draw(request)
            if (request.node == ROOT).all():
                out.rewards[:, ::5] = np.nan
            return out

    for budget in (16, 64, 100):
        _, ledger = play(SharedSLG, DropsSome(tied_bank(), 100, np.random.default_rng(budget)), budget)
        assert (ledger.spent == budget).all()


def test_a_state_whose_first_half_falls_below_the_root_gives_the_rest_back_to_the_prompt():
    """A misleading prefix (state "c" scores best but rewards lowest): after its first half of the
    share, its rollouts average below the root's, so the other half goes to fresh prompt draws."""
    budget, batch = 64, 300
    source = Recording(tied_bank(scores=(0.0, 0.1, 5.0)), batch, np.random.default_rng(2))
    policy, ledger = play(SharedSLG, source, budget)
    share = ShareConfig()
    to_state = round(share.state_share * (1 - share.root_fraction) * budget)
    state_rollouts = sum(np.where(node >= 0, count, 0) for node, count in source.requests)
    revealed_c = state_rollouts > 0
    assert revealed_c.mean() > 0.5
    # state c's pool (0, 0, 0.2, 0.3) is below the root's mean in most episodes: half a share, then no more
    assert np.mean(state_rollouts[revealed_c] == to_state // 2) > 0.8
    assert (ledger.spent == budget).all()
    assert (policy.selected[state_rollouts == to_state // 2] == ROOT).all()


def test_a_large_bank_of_continuous_rewards_is_slg_adaptive_request_for_request():
    """64 states of 4000 distinct continuous rewards each: at N = 1024 the root's draws through one
    state repeat a reward now and then (the bank redraws its pool), which a live engine would not
    do; that is not a reward with few levels, so slg_share must play slg_adaptive's episodes."""
    rng = np.random.default_rng(0)
    states = [rng.normal(mean, 1.0, 4000).tolist() for mean in rng.normal(0.0, 1.0, 64)]
    prompt = BankPrompt("big", states, state_texts=[f"s{k}" for k in range(64)], state_scores=rng.normal(size=64).tolist())

    class FirstDraw(Recording):
        def draw(self, request):
            rollouts = super().draw(request)
            self.root = getattr(self, "root", rollouts.rewards)
            return rollouts

    shared, adaptive = FirstDraw(prompt, 40, np.random.default_rng(3)), Recording(prompt, 40, np.random.default_rng(3))
    _, shared_ledger = play(SharedSLG, shared, 1024)
    _, adaptive_ledger = play(AdaptiveSLG, adaptive, 1024)
    assert len(shared.requests) == len(adaptive.requests)
    for (node, count), (node_a, count_a) in zip(shared.requests, adaptive.requests):
        assert (node == node_a).all() and (count == count_a).all()
    assert (shared_ledger.best_reward == adaptive_ledger.best_reward).all()
    repeated = (np.diff(np.sort(shared.root, axis=1), axis=1) == 0).any(axis=1)
    assert repeated.sum() >= 5  # the redraws happen, so the check is not vacuous
