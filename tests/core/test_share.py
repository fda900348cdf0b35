"""slg_share: where rewards repeat and prefixes are scored, the state that its prefix score (and, at a
quarter weight, its root reward) rank first shares the budget with fresh prompt draws; on continuous
rewards at budgets without halving, where prefix scores track rewards, the state that prefix score
and reward together rank first does; elsewhere it is slg_adaptive, request for request; the budget
is spent exactly."""

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.special
import scipy.stats

from pipeline.offline.episodes import BankPrompt, BankSource, WorldSource, run_episodes
from pipeline.offline.worlds import make_world
from pipeline.search import share as share_module
from pipeline.search.adaptive import AdaptiveSLG
from pipeline.search.bon import BestOfN
from pipeline.search.config import SearchConfig, ShareConfig, StateSelection
from pipeline.search.protocol import NO_NODE, ROOT, Request, Rollouts
from pipeline.search.reward_levels import few_levels, modal_share, on_a_grid, repeats, repeats_itself
from pipeline.search.root_evidence import (
    best_evidence_state,
    best_reward_state,
    few_rewards_threshold,
    first_half_far_narrower,
    prefix_slope,
    rewards_saturate,
    root_moments,
    states_look_narrow,
    tails_fall,
    tails_fall_unsquashed,
    width_slope,
    width_slope_error,
)
from pipeline.search.share import SharedSLG, _joined
from pipeline.search.share_gate import best_root_reward_of
from pipeline.stats.quantile_scale import QuantileScale


def tied_bank(scores=(0.0, 2.0, 0.1), texts=("a", "b", "c")) -> BankPrompt:
    """Three states with few reward levels; state "b" (a quarter of the draws) is the best, and its
    prefix scores best by default."""
    states = [[0.0, 0.1, 0.1, 0.2], [0.5, 0.9, 0.9, 1.0], [0.0, 0.0, 0.2, 0.3], [0.0, 0.1, 0.1, 0.2]]
    return BankPrompt("p", states, state_texts=[texts[0], texts[1], texts[2], texts[0]],
                      state_scores=[scores[0], scores[1], scores[2], scores[0]])


def recording(source_class):
    """``source_class`` that keeps every request: (node, count) per episode, and whether it asked
    for prefix scores."""
    class Recording(source_class):
        def __init__(self, *args):
            super().__init__(*args)
            self.requests, self.scored = [], []

        def draw(self, request):
            self.requests.append((request.node.copy(), request.count.copy()))
            self.scored.append(request.score_prefixes)
            return super().draw(request)
    return Recording


Recording = recording(BankSource)


# the share rounds with state_share (0.375 N) at any N: the tests of the checks and the commitment
# below were written against it; full_share_from has its own tests
STATE_SHARE = SearchConfig(share=ShareConfig(full_share_from=None))


def play(policy_class, source, budget, config=None, seed=1):
    policy = policy_class(budget, source.batch_size, config or SearchConfig(), rng=np.random.default_rng(seed))
    return policy, run_episodes(policy, source)


@pytest.mark.parametrize("budget", [1, 5, 11, 12, 13, 16, 17, 31, 32, 64, 100, 127, 255, 256, 257, 300, 512])
def test_the_budget_is_spent_exactly(budget):
    for source in (Recording(tied_bank(), 64, np.random.default_rng(budget)),
                   Recording(committing_bank(), 64, np.random.default_rng(budget)),
                   WorldSource(make_world("discrete"), 64, np.random.default_rng(budget), np.random.default_rng(7)),
                   WorldSource(make_world("gaussian"), 64, np.random.default_rng(budget), np.random.default_rng(7))):
        _, ledger = play(SharedSLG, source, budget)
        assert (ledger.spent == budget).all()


@pytest.mark.parametrize("budget, top_up, prompt_after", [(16, False, True), (64, True, True), (256, False, False)])
def test_only_the_root_and_its_top_up_ask_for_prefix_scores(budget, top_up, prompt_after):
    """A prefix score is a reward-model call per state, and only the picks read them: the root
    request asks, and so does its top-up to ``share.root_fraction`` N where there is one (none at N =
    16, where slg_adaptive's root of 12 is already more than N / 2, nor at 256, where this bank's
    state is committed to without one); no later request does (the state's halves, and prompt draws
    after the pick, though they reveal states: ``prompt_after``, where some first halves go back)."""
    source = recording(BankSource)(committing_bank(), 300, np.random.default_rng(budget))
    play(SharedSLG, source, budget)
    nodes = [node[count > 0] for node, count in source.requests]
    asked = [k for k, scored in enumerate(source.scored) if scored]
    assert asked == ([0, 1] if top_up else [0])
    assert all((nodes[k] == ROOT).all() for k in asked)
    assert any((node == ROOT).any() for node in nodes[len(asked):]) == prompt_after  # not scored


def test_where_a_prefix_scores_clearly_best_it_gets_its_share_and_the_prompt_the_rest():
    budget, batch = 64, 400
    source = Recording(tied_bank(), batch, np.random.default_rng(0))
    policy, _ = play(SharedSLG, source, budget, STATE_SHARE)
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
    assert np.isnan(policy.selected_prediction).all()  # every episode ran the share rounds: no tail fit decided


def test_sharing_pays_on_a_bank_where_the_best_state_is_rare():
    budget, batch = 32, 2000
    bank = tied_bank()
    _, shared = play(SharedSLG, BankSource(bank, batch, np.random.default_rng(3)), budget)
    _, bon = play(BestOfN, BankSource(bank, batch, np.random.default_rng(3)), budget)
    # state b reaches 1.0 with chance 1/4 a draw, the prompt 1/16: 12 more draws from b beat bon clearly
    difference = shared.best_reward - bon.best_reward
    assert difference.mean() > 3 * difference.std() / np.sqrt(batch)


@pytest.mark.parametrize("level", [0.0, 5.0])  # the gap is to the average prefix score, not to zero
def test_without_a_clear_prefix_gap_the_rest_is_best_of_n(level):
    source = Recording(tied_bank(scores=(level, level + 0.01, level)), 200, np.random.default_rng(0))
    policy, _ = play(SharedSLG, source, 64)
    assert (policy.selected == ROOT).all()
    assert all((node[count > 0] == ROOT).all() for node, count in source.requests)


@pytest.mark.parametrize("budget", [160, 256])
@pytest.mark.parametrize("family", ["gaussian", "bimodal"])
def test_with_continuous_rewards_and_two_halvings_it_is_slg_adaptive_request_for_request(family, budget):
    """From N = 160 slg_adaptive's plan halves its candidates twice or more: its screening pays there,
    where states are not narrow (these worlds' states are as wide as the spread between them). With
    its candidates ranked by reward (``share.evidence_candidates`` off) it is slg_adaptive; by default
    the candidates differ (their own tests below)."""
    world = make_world(family)
    by_reward = SearchConfig(share=ShareConfig(evidence_candidates=False))
    runs = []
    for cls, config in ((SharedSLG, by_reward), (AdaptiveSLG, None), (SharedSLG, None)):
        source = WorldSource(world, 300, np.random.default_rng(5), np.random.default_rng(6))
        policy, ledger = play(cls, source, budget, config)
        runs.append((policy.selected, ledger.best_reward))
    assert (runs[0][0] == runs[1][0]).all() and (runs[0][1] == runs[1][1]).all()
    assert (runs[2][0] != runs[1][0]).any()


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
    ({"min_prefix_slope": float("nan")}, "search.share.min_prefix_slope"),
    ({"reward_weight": -0.5}, "search.share.reward_weight"),
    ({"lead_gap": -0.1}, "search.share.lead_gap"),
    ({"lead_gap": float("nan")}, "search.share.lead_gap"),
    ({"lead_gap": float("inf")}, "search.share.lead_gap"),
    ({"rival_gap": -0.1}, "search.share.rival_gap"),
    ({"rival_gap": float("nan")}, "search.share.rival_gap"),
    ({"reward_weight": float("inf")}, "search.share.reward_weight"),
    ({"narrow_states": -0.1}, "search.share.narrow_states"),
    ({"narrow_states": float("nan")}, "search.share.narrow_states"),
    ({"commit_from": 0}, "search.share.commit_from"),
    ({"ungated_from": 0}, "search.share.ungated_from"),
    ({"full_share_from": 0}, "search.share.full_share_from"),
    ({"modal_check": 0.0}, "search.share.modal_check"),
    ({"modal_check": 1.5}, "search.share.modal_check"),
    ({"modal_check": float("nan")}, "search.share.modal_check"),
    ({"below_best_lead": float("-inf")}, "search.share.below_best_lead"),
    ({"below_best_lead": float("nan")}, "search.share.below_best_lead"),
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
    policy, ledger = play(SharedSLG, source, budget, STATE_SHARE)
    share = ShareConfig()
    to_state = round(share.state_share * (1 - share.root_fraction) * budget)
    state_rollouts = sum(np.where(node >= 0, count, 0) for node, count in source.requests)
    revealed_c = state_rollouts > 0
    assert revealed_c.mean() > 0.5
    # state c's pool (0, 0, 0.2, 0.3) is below the root's mean in most episodes: half a share, then no more
    assert np.mean(state_rollouts[revealed_c] == to_state // 2) > 0.8
    assert (ledger.spent == budget).all()
    assert (policy.selected[state_rollouts == to_state // 2] == ROOT).all()


def deep_state_bank(deep_rewards=(0.8,) * 20) -> BankPrompt:
    """A deep state ("d": its prefix already fixes the response, every rollout scores 0.8 by default)
    whose prefix scores best, beside two wide states that reach 1.0 once in 20 rollouts. "d" is half of
    the draws (two rows of one prefix: one state), so nearly every root repeats its reward; the wide
    states' rewards differ, as two states' responses do (shared ones would make it a grid of levels)."""
    wide = np.linspace(0.0, 1.0, 20)
    return BankPrompt("deep", [list(deep_rewards), list(deep_rewards), wide.tolist(), (wide - 0.001).tolist()],
                      state_texts=["d", "d", "w1", "w2"], state_scores=[3.0, 3.0, 0.0, 0.0])


def state_rollouts_of(source) -> np.ndarray:
    return sum(np.where(node >= 0, count, 0) for node, count in source.requests)


def committing_bank(good=(0.72, 0.77, 0.82, 0.87, 0.92, 0.97)) -> BankPrompt:
    """A state "g" whose prefix scores best, of six reward levels by default (its responses repeat:
    few levels), beside two wide states of twenty. No reward is shared between states: off a grid."""
    wide = np.linspace(0.0, 1.0, 20)
    return BankPrompt("commit", [list(good) * 4, wide.tolist(), (wide - 0.001).tolist()],
                      state_texts=["g", "w1", "w2"], state_scores=[3.0, 0.0, 0.0])


def paired_bank_gain(bank: str, budget: int, episodes: int, settings: dict, baseline: dict) -> np.ndarray:
    """Per episode of every problem of ``data/<bank>``, slg_share's best reward with the share
    ``settings`` less that with ``baseline``, on common random numbers."""
    from pathlib import Path

    from pipeline.offline.bank import read_bank

    gains = []
    for k, prompt in enumerate(read_bank(Path(__file__).resolve().parents[2] / "data" / bank)):
        best = [run_episodes(SharedSLG(budget, episodes, SearchConfig(share=ShareConfig(**share)),
                                       rng=np.random.default_rng(k)),
                             BankSource(prompt, episodes, np.random.default_rng(100 + k))).best_reward
                for share in (settings, baseline)]
        gains.append(best[0] - best[1])
    return np.concatenate(gains)


def same_requests(make_source, budget: int, settings: dict, baseline: dict) -> list:
    """slg_share's requests with the share ``settings``, asserted equal, request for request, to those
    with ``baseline`` on a fresh source from ``make_source``."""
    asked = []
    for share in (settings, baseline):
        source = make_source()
        play(SharedSLG, source, budget, SearchConfig(share=ShareConfig(**share)))
        asked.append(source.requests)
    assert len(asked[0]) == len(asked[1])
    for (node, count), (node_off, count_off) in zip(*asked):
        assert (node == node_off).all() and (count == count_off).all()
    return asked[0]


def root_of(budget) -> int:
    from pipeline.search.adaptive import adaptive_plan
    config = SearchConfig()
    return adaptive_plan(budget, config.adaptive, config.schedule(budget)[1]).root_rollouts


@pytest.mark.parametrize("budget, commit_from, committed", [(256, 256, True), (512, 256, True), (255, 256, False),
                                                            (256, None, False), (128, 128, True)])
def test_from_commit_from_off_a_grid_the_state_gets_all_the_root_leaves(budget, commit_from, committed):
    """Few levels off a grid, from N = ``share.commit_from``: no top-up of the root, and the state
    gets all the root leaves (179 of 256 after a root of 77), in the same two halves; below it, or
    switched off, 0.375 N (96 of 256) after a root topped up to N / 2."""
    batch = 300
    config = SearchConfig(share=ShareConfig(commit_from=commit_from, full_share_from=None))
    source = Recording(committing_bank(), batch, np.random.default_rng(budget))
    policy, ledger = play(SharedSLG, source, budget, config)
    state = state_rollouts_of(source)
    shared = state > 0
    assert shared.mean() > 0.95  # "g" is a third of the draws and its prefix leads by far
    expected = budget - root_of(budget) if committed else round(0.375 * budget)
    assert (state[shared] == expected).mean() > 0.95  # its first half averages far above the root and does not repeat
    assert (ledger.spent == budget).all()


@pytest.mark.parametrize("budget, ungated_from, lead_gap, shared", [
    (256, 128, None, True), (512, 128, None, True), (128, 128, None, True), (200, 128, None, True),
    (127, 128, None, False), (256, None, None, False), (128, 256, None, False),
    (128, 128, 5.0, True), (127, 128, 5.0, False),  # the second gate, out of reach here, changes nothing
])
def test_from_ungated_from_the_pick_needs_no_prefix_gap(budget, ungated_from, lead_gap, shared):
    """"g" ranks first but its prefix leads the average draw's by 0.07, less than ``share.prefix_gap``
    (0.5) root-reward sds (about 0.15): from N = ``share.ungated_from`` it still gets its share, all
    the root leaves from ``commit_from`` (179 of 256) and all of the half a topped-up root leaves
    below it (64 of 128); below ungated_from, or with it off, the gap holds and the rest is best-of-N
    (``share.below_best_lead`` off: it would share where "g"'s root rollouts stay below the best)."""
    batch = 300
    config = SearchConfig(share=ShareConfig(ungated_from=ungated_from, lead_gap=lead_gap, below_best_lead=None))
    bank = committing_bank()
    bank = BankPrompt("commit", bank.state_rewards, state_texts=["g", "w1", "w2"], state_scores=[0.1, 0.0, 0.0])
    source = Recording(bank, batch, np.random.default_rng(budget))
    _, ledger = play(SharedSLG, source, budget, config)
    state = state_rollouts_of(source)
    if shared:  # all but the roots that drew no "g" and the first halves sent back
        expected = budget - root_of(budget) if budget >= 256 else budget - round(0.5 * budget)
        assert (state == expected).mean() > 0.95
    else:
        assert (state == 0).mean() > 0.95
    assert (ledger.spent == budget).all()


def below_best_root(prefix_scores, rewards) -> Rollouts:
    """One root row of four states, two rollouts each: a state's prefix score and its one reward
    (repeated: few levels)."""
    through = np.repeat(np.arange(0, 8, 2), 2)[None]
    return Rollouts(np.repeat(np.asarray(rewards, float), 2)[None], np.ones((1, 8), bool), None, through,
                    np.repeat(np.asarray(prefix_scores, float), 2)[None])


@pytest.mark.parametrize("rewards, below_best_lead, grid, shared", [
    ([0.3, 0.5, 0.1, 0.2], 0.0, False, True),     # the pick's 0.3 below the root's best, 0.5: it shares
    ([0.3, 0.5, 0.1, 0.2], None, False, False),   # ... not with the setting off
    ([0.3, 0.5, 0.1, 0.2], 0.2, False, False),    # ... nor where the lead (0.0225) is under 0.2 sds (0.030)
    ([0.5, 0.3, 0.1, 0.2], 0.0, False, False),    # the pick holds the best: the prefix gap alone decides
    ([0.3, 0.5, 0.3, 0.5], 0.0, True, False),     # a grid of levels (0.3, 0.5 in two states each): the gap alone
])
def test_below_the_roots_best_a_pick_shares_on_a_small_prefix_lead(rewards, below_best_lead, grid, shared):
    """Prefix scores 0.9, 0.88, 0.86, 0.87: the first state ranks first (prefix 1.52 sds, plus a
    quarter of its reward's) and leads the average score (0.8775) by 0.0225, under the prefix gap
    (0.5 x the rewards' sd, 0.148 where they are 0.3, 0.5, 0.1, 0.2). Below ``share.ungated_from``
    it still gets the share where its root rollouts stayed below the root's best reward, off a grid."""
    root = below_best_root([0.9, 0.88, 0.86, 0.87], rewards)
    assert on_a_grid(root)[0] == grid and few_levels(root)[0]
    config = SearchConfig(share=ShareConfig(below_best_lead=below_best_lead, grid_best_level=False))
    picked = SharedSLG(64, 1, config)._best_prefix_state(root, np.ones(1, bool))
    assert picked[0] == (0 if shared else NO_NODE)


@pytest.mark.parametrize("rival_gap, shared", [(0.1, True), (0.2, False)])
def test_a_pick_below_the_best_loses_its_share_to_a_common_rival_too(rival_gap, shared):
    """The root of the test above whose pick shares only below the best (prefix scores 0.9, 0.88, 0.86,
    0.87, two rollouts each; rewards 0.3, 0.5, 0.1, 0.2, an sd of 0.148): the second state, drawn twice,
    reads 0.02 below the pick, beyond 0.1 x 0.148 and within 0.2 x 0.148. The rival rule holds for
    every way a pick clears the gate."""
    root = below_best_root([0.9, 0.88, 0.86, 0.87], [0.3, 0.5, 0.1, 0.2])
    config = SearchConfig(share=ShareConfig(rival_gap=rival_gap, grid_best_level=False))
    assert SharedSLG(64, 1, config)._best_prefix_state(root, np.ones(1, bool))[0] == (0 if shared else NO_NODE)


def test_below_the_best_reads_each_row_and_every_root_rollout_of_the_state():
    """Two rows in one batch, the grid one first: only the off-grid row below the best shares (the
    rule is per row). And with the reward out of the rank (``reward_weight`` 0) the picked state's
    first root rollout (0.3) is below the root's best while its second (0.5) is the best: the state
    holds the best, so the small lead does not clear."""
    rows = [below_best_root([0.9, 0.88, 0.86, 0.87], rewards) for rewards in ([0.3, 0.5, 0.3, 0.5], [0.3, 0.5, 0.1, 0.2])]
    both = Rollouts(*(np.concatenate([getattr(row, name) for row in rows]) for name in ("rewards", "can_branch")), None,
                    *(np.concatenate([getattr(row, name) for row in rows]) for name in ("state_index", "state_score")))
    config = SearchConfig(share=ShareConfig(grid_best_level=False))
    assert SharedSLG(64, 2, config)._best_prefix_state(both, np.ones(2, bool)).tolist() == [NO_NODE, 0]
    holds = below_best_root([0.9, 0.88, 0.86, 0.87], [0.3, 0.4, 0.1, 0.2])
    holds.rewards[0, 1] = 0.5  # the picked state's second root rollout: the root's best
    assert not on_a_grid(holds)[0] and few_levels(holds)[0]
    config = SearchConfig(share=ShareConfig(reward_weight=0.0, grid_best_level=False))
    assert SharedSLG(64, 1, config)._best_prefix_state(holds, np.ones(1, bool))[0] == NO_NODE


def test_below_the_best_a_small_lead_pays_on_the_toy_models_bank():
    """toy_t12 at N = 64, 1000 episodes a problem, paired: sharing where the pick's root rollouts stay
    below the root's best and its prefix leads the average draw's by less than ``share.prefix_gap``
    gains over ``share.below_best_lead = null`` (+0.0015 +- 0.0003, 95%, at 500 repeats with `slg
    replay`; docs/design-record.md, "Below the best, a small lead"): the test asks for 3 standard
    errors."""
    gain = paired_bank_gain("banks/toy_t12.parquet", 64, 1000, {}, {"below_best_lead": None})
    assert gain.mean() > 3 * gain.std(ddof=1) / math.sqrt(gain.size)


def test_a_root_whose_rewards_do_not_spread_shares_with_none_even_ungated():
    """From N = ``share.ungated_from`` the pick needs no prefix gap, but a root of one reward says
    nothing of its state (its rank in root sds is 0): the rest stays best-of-N. (One state: two that
    share the reward would be a grid of levels, which keeps the gap anyway.)"""
    bank = BankPrompt("flat", [[0.5] * 8], state_texts=["a"], state_scores=[1.0])
    source = Recording(bank, 64, np.random.default_rng(3))
    _, ledger = play(SharedSLG, source, 128)
    assert (state_rollouts_of(source) == 0).all() and (ledger.spent == 128).all()


@pytest.mark.parametrize("budget, standard_errors", [(128, 3), (256, 2)])
def test_no_prefix_gap_from_n_128_pays_on_the_toy_models_bank(budget, standard_errors):
    """toy_t12 (50 problems x 16 states x 512 completions, T = 12: a bank held out of slg_share's first
    design), 1000 episodes a problem, paired: sharing where the pick's prefix leads by less than
    ``share.prefix_gap`` gains +0.0015 +- 0.0003 at N = 128 and +0.0009 +- 0.0003 at 256 (one standard
    error over episodes) over ``share.ungated_from = null``, where roots whose best state leads by less
    share with none (docs/design-record.md, "No prefix gap from N = 128", has the replays of twelve
    banks). At 256 the gain is 3.2 standard errors: the test asks for 2. (Against the gap as it was
    then, without ``share.below_best_lead``, which shares some of those roots below N = 128.)"""
    gain = paired_bank_gain("banks/toy_t12.parquet", budget, 1000, {}, {"ungated_from": None, "below_best_lead": None})
    assert gain.mean() > standard_errors * gain.std(ddof=1) / math.sqrt(gain.size)


@pytest.mark.parametrize("budget, full_share_from, full", [(64, 64, True), (65, 64, True), (128, 64, True), (255, 64, True),
                                                           (63, 64, False), (64, None, False), (127, 128, False),
                                                           (128, 128, True)])
def test_from_full_share_from_off_a_grid_the_state_gets_all_the_half_the_root_leaves(budget, full_share_from, full):
    """Few levels off a grid, from N = ``share.full_share_from``: after the root is topped up to
    ``root_fraction`` N (N / 2), the state gets all the rest (32 of 64), not ``state_share`` of it
    (0.375 N: 24 of 64), in the same two halves; no fresh prompt draws follow."""
    batch = 300
    config = SearchConfig(share=ShareConfig(full_share_from=full_share_from))
    source = Recording(committing_bank(), batch, np.random.default_rng(budget))
    _, ledger = play(SharedSLG, source, budget, config)
    state = state_rollouts_of(source)
    shared = state > 0
    assert shared.mean() > 0.95
    half = round(0.5 * budget)  # the root, topped up (Python's round, as the policy's: 127.5 -> 128)
    expected = budget - half if full else round(0.375 * budget)
    assert (state[shared] == expected).mean() > 0.95  # "g"'s first half holds up: six levels, none repeated much
    assert (ledger.spent == budget).all()


def test_the_full_share_pays_on_a_grid_of_levels_too():
    """The discrete world (10 levels, a grid: states share levels) at N = 128, 20,000 episodes, paired
    against ``full_share_from = null``: measured +0.0024 +- 0.0004 (one standard error). Unlike the
    commitment, which halved the gain on a grid (a state's best stops at its level), the full share
    leaves the root's N / 2 of prompt draws as they were."""
    from tests.core.test_policies import play_paired

    world = make_world("discrete", levels=10)
    _, full = play_paired("slg_share", 128, world, 20_000, 3, SearchConfig())
    _, half = play_paired("slg_share", 128, world, 20_000, 3, SearchConfig(share=ShareConfig(full_share_from=None)))
    gain = full.best_reward - half.best_reward
    assert gain.mean() > 3 * gain.std(ddof=1) / math.sqrt(gain.size)


def test_the_full_share_pays_on_continuous_rewards_too():
    """gaussian at N = 128, 20,000 episodes, paired against ``full_share_from = null`` (no episode of
    this world has few levels, so only the episodes picked by evidence differ): a state picked on
    prefix score and root reward together gets all that the root leaves, and its tail beyond its
    mean pays more than fresh prompt draws. Measured +0.061 +- 0.004 (one standard error); the bound
    0.04 is five of them below it."""
    from tests.core.test_policies import play_paired

    world = make_world("gaussian")
    _, full = play_paired("slg_share", 128, world, 20_000, 3, SearchConfig())
    _, share = play_paired("slg_share", 128, world, 20_000, 3, SearchConfig(share=ShareConfig(full_share_from=None)))
    gain = full.best_reward - share.best_reward
    assert gain.mean() > 0.04


@pytest.mark.parametrize("budget", [64, 256])
@pytest.mark.parametrize("modal_check, given_back", [(0.6, True), (None, False), (0.9, False)])
def test_a_state_whose_first_half_is_mostly_one_reward_gives_the_rest_back(modal_check, given_back, budget):
    """State "d" scores 0.8 four times in five and otherwise 0.85-0.99, above its root rollouts: not a
    mere repeat (the repeat check keeps it), but a deep state whose prefix mostly fixes its response.
    At N = 64 it gets the full share (32 after a root topped up to 32), at 256 the commitment (179
    after a root of 77). With the modal check at 0.6, its first half (16: 80% one reward on average,
    under 60% in 1.3% of them; 89) sends its second half to the prompt; at 0.9, or with the check
    off, it keeps it. (On toy_t18_temp08, a bank of deep states at temperature 0.8 kept outside the
    repository, the check on commitments took slg_share at N = 256 from -0.0006 to +0.0001 against
    best-of-N; docs/design-record.md.)"""
    config = SearchConfig(share=ShareConfig(modal_check=modal_check))
    source = Recording(deep_state_bank((0.8,) * 16 + (0.85, 0.9, 0.95, 0.99)), 300, np.random.default_rng(budget))
    policy, ledger = play(SharedSLG, source, budget, config)
    rollouts = state_rollouts_of(source)
    shared = rollouts > 0
    assert shared.mean() > 0.9
    left = budget - (root_of(budget) if budget >= 256 else round(0.5 * budget))
    given = rollouts[shared] == left // 2
    assert given.mean() > 0.95 if given_back else given.mean() < 0.5
    assert (ledger.spent == budget).all()


@pytest.mark.parametrize("shape", ["committed", "grid", "narrow continuous"])
def test_from_commit_from_the_full_share_and_its_modal_check_step_aside(shape):
    """At N = 256 a committed state gets all the root leaves with the commitment's checks, the modal
    check among them (on the bank whose state is mostly one reward), and a grid of levels (the
    discrete world) and narrow continuous states (gaussian sigma1 = 0.15, which share by evidence
    there) keep ``state_share``: requests are those of ``full_share_from = null``."""
    def source():
        if shape != "committed":
            world = make_world("discrete", levels=10) if shape == "grid" else make_world("gaussian", sigma1=0.15)
            return recording(WorldSource)(world, 200, np.random.default_rng(8), np.random.default_rng(9))
        return Recording(deep_state_bank((0.8,) * 16 + (0.85, 0.9, 0.95, 0.99)), 200, np.random.default_rng(12))
    asked = same_requests(source, 256, {"full_share_from": 64}, {"full_share_from": None})
    assert any((count[node >= 0] > 0).any() for node, count in asked)  # states were shared with


def test_the_modal_share_is_the_most_frequent_reward_s_share_of_those_scored():
    rewards = np.array([[0.8, 0.8, 0.9, 0.8, np.nan], [1.0, 2.0, 3.0, 4.0, 5.0], [np.nan] * 5, [0.5] * 5])
    assert modal_share(rewards) == pytest.approx([0.75, 0.2, 0.0, 1.0])


def test_the_full_share_pays_on_the_toy_models_bank_at_n_96():
    """data/toy_bank (real outputs of the toy models: 100 problems x 16 states x 64 completions) at
    N = 96, 2000 episodes a problem, paired against ``full_share_from = null``: measured +0.0009 +-
    0.0001 (one standard error over episodes); the replays of docs/design-record.md, "All of the half to the
    state, from N = 64", give the other banks."""
    gain = paired_bank_gain("toy_bank/bank.jsonl", 96, 2000, {"full_share_from": 64}, {"full_share_from": None})
    assert gain.mean() > 3 * gain.std(ddof=1) / math.sqrt(gain.size)


@pytest.mark.parametrize("levels", [5, 10])
def test_on_a_grid_the_state_does_not_get_all_the_root_leaves(levels):
    """The discrete world's states share reward levels (a grid): at N = 256 its requests are those of
    ``commit_from = null``, request for request."""
    asked = same_requests(lambda: recording(WorldSource)(make_world("discrete", levels=levels), 200,
                                                         np.random.default_rng(8), np.random.default_rng(9)),
                          256, {"commit_from": 256, "full_share_from": None}, {"commit_from": None, "full_share_from": None})
    assert any((count[node >= 0] > 0).any() for node, count in asked)  # states were shared with


def test_a_committed_state_whose_first_half_falls_below_the_root_gives_the_rest_back():
    """The commitment keeps the first-half checks: "g" scores best but its rewards (0.05-0.3) sit
    below the root's mean, so after its first half of 89 (of the 179 the root leaves at N = 256) the
    rest goes to fresh prompt draws."""
    budget, batch = 256, 300
    source = Recording(committing_bank(good=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3)), batch, np.random.default_rng(5))
    policy, ledger = play(SharedSLG, source, budget)
    state = state_rollouts_of(source)
    shared = state > 0
    assert shared.mean() > 0.95
    assert (state[shared] == (budget - root_of(budget)) // 2).all()
    assert (policy.selected[shared] == ROOT).all() and (ledger.spent == budget).all()


def test_committing_pays_on_the_toy_models_bank_at_n_256():
    """toy_t16 (real outputs of the toy models: 50 problems x 16 states x 512 completions) at N = 256,
    1000 episodes a problem, paired: all the root leaves to the state gains +0.0014 +- 0.0003 (one
    standard error over episodes) over ``commit_from = null``. The same measurement gives +0.0007 +-
    0.0003 on toy_t8 and +0.0006 +- 0.0004 on toy_t12 (docs/design-record.md, "All the root leaves to the
    state", has the replays)."""
    gain = paired_bank_gain("banks/toy_t16.parquet", 256, 1000, {"commit_from": 256, "full_share_from": None},
                            {"commit_from": None, "full_share_from": None})
    assert gain.mean() > 3 * gain.std(ddof=1) / math.sqrt(gain.size)


@pytest.mark.parametrize("budget", [16, 28, 64])
@pytest.mark.parametrize("repeat_check", [True, False])
def test_a_state_whose_first_half_only_repeats_itself_gives_the_rest_back_to_the_prompt(repeat_check, budget):
    """State "d" averages above the root, so the mean check keeps it; but its first half repeats the
    one reward its root rollout showed, so with the repeat check its second half goes to the prompt:
    a first half of 12 at N = 64, of 5 at N = 28 and of 2 at N = 16 (after a root of 12, the state's
    share is 4)."""
    batch = 300
    config = SearchConfig(share=ShareConfig(repeat_check=repeat_check, full_share_from=None))
    source = Recording(deep_state_bank(), batch, np.random.default_rng(4))
    policy, ledger = play(SharedSLG, source, budget, config)
    to_state = {16: 4, 28: 10, 64: 24}[budget]  # 0.375 N, or what the root leaves
    rollouts = state_rollouts_of(source)
    shared = rollouts > 0
    assert shared.mean() > 0.9  # "d" is revealed (half of the draws) and its prefix leads by far
    # all but the few episodes whose root shows no repeated reward (fewer "d" than 2 in a root of 12: 1 in 300): slg_adaptive's
    given = rollouts[shared] == (to_state // 2 if repeat_check else to_state)
    assert given.mean() > 0.95
    assert ((policy.selected[shared][given] == ROOT) == repeat_check).all()
    assert (ledger.spent == budget).all()


def test_a_state_whose_first_half_beats_its_own_root_rollouts_keeps_its_second_half():
    """State "d" now reaches 0.6 or 0.8 (two levels: fewer than three), and its root rollouts are made
    to score 0.6. Its first half shows 0.8, above its own root rollouts though not above the root's
    best (the wide states reach 1.0): it is not a mere repeat, and it keeps its whole share."""
    class LowRootThroughD(Recording):
        def draw(self, request):
            rollouts = super().draw(request)
            if (request.node == ROOT).any():
                rollouts.rewards[rollouts.state_score == 3.0] = 0.6  # "d"'s root rollouts
            return rollouts

    budget, batch = 64, 300
    source = LowRootThroughD(deep_state_bank((0.6, 0.8) * 10), batch, np.random.default_rng(6))
    play(SharedSLG, source, budget, STATE_SHARE)
    share = ShareConfig()
    to_state = round(share.state_share * (1 - share.root_fraction) * budget)
    rollouts = state_rollouts_of(source)
    shared = rollouts > 0
    assert shared.mean() > 0.9
    assert (rollouts[shared] == to_state).mean() > 0.99  # a first half of 12 all at 0.6: one in 4096


def test_giving_a_repeating_state_back_pays_where_fresh_draws_find_more():
    """On the deep-state bank at N = 64, 4000 episodes: with the repeat check the 12 rollouts that "d"
    would only repeat go to prompt draws, each of which reaches 1.0 or 0.999 one time in 40 (and 0.85
    or more one time in 13); measured +0.0101 +- 0.0006 (one standard error) over the check switched off."""
    budget, batch = 64, 4000
    best = {}
    for repeat_check in (True, False):
        config = SearchConfig(share=ShareConfig(repeat_check=repeat_check, full_share_from=None))
        best[repeat_check] = play(SharedSLG, BankSource(deep_state_bank(), batch, np.random.default_rng(9)),
                                  budget, config)[1].best_reward
    difference = best[True] - best[False]
    assert difference.mean() > 3 * difference.std() / np.sqrt(batch)


def test_a_state_repeats_itself_where_its_first_half_shows_too_few_rewards_none_above_its_root():
    """Reference: a plain loop with sets over each row's scored rewards (NaN: a dropped score): one
    distinct reward from 2 rollouts, fewer than 3 from 6."""
    rng = np.random.default_rng(0)
    first_half = rng.choice([0.1, 0.5, 0.8, np.nan], size=(600, 8), p=[0.15, 0.15, 0.6, 0.1])
    first_half[:300, rng.integers(1, 7)] = np.nan
    for row in range(300):  # small first halves, 0-5 scored, half of them one repeated reward
        first_half[row, rng.integers(0, 6):] = np.nan
        if row % 2:
            first_half[row] = np.where(np.isnan(first_half[row]), np.nan, 0.8)
    own_best = rng.choice([0.5, 0.8, 1.0, -np.inf], size=600)
    repeats = repeats_itself(first_half, own_best)
    for b in range(600):
        scored = [r for r in first_half[b] if not math.isnan(r)]
        too_few = (len(scored) >= 6 and len(set(scored)) < 3) or (len(scored) >= 2 and len(set(scored)) == 1)
        assert repeats[b] == (too_few and not max(scored) > own_best[b]), b
    small = (~np.isnan(first_half)).sum(axis=1) < 6
    for judged in (repeats[small], repeats[~small]):  # both outcomes among small and large first halves
        assert 0 < judged.sum() < judged.size - 20
    assert not repeats_itself(np.empty((3, 0)), np.zeros(3)).any()


def test_only_equal_rewards_repeat():
    """0.1 + 0.2 and 0.3 differ in their last bit: two rewards, not a repeat."""
    assert list(repeats(np.array([[0.1 + 0.2, 0.3, np.nan], [0.3, 0.3, np.nan]]))) == [0, 1]


def test_a_state_s_own_best_root_reward_is_over_the_root_rollouts_through_it():
    rewards = np.array([[-0.2, 0.9, -0.5, np.nan], [0.3, 0.1, 0.7, 0.4]])  # a dropped score is no reward
    index = np.array([[0, 1, 0, 0], [0, 1, 2, -1]])
    root = Rollouts(rewards, np.ones_like(rewards, bool), None, index, np.zeros_like(rewards))
    assert best_root_reward_of(root, np.array([0, 2])).tolist() == [-0.2, 0.7]
    assert best_root_reward_of(root, np.array([NO_NODE, 1])).tolist() == [-np.inf, 0.1]


def test_a_large_bank_of_continuous_rewards_is_slg_adaptive_request_for_request():
    """64 states of 4000 distinct continuous rewards each: at N = 1024 the root's draws through one
    state repeat a reward now and then (the bank redraws its pool), which a live engine would not
    do; that is not a reward with few levels, so slg_share must play slg_adaptive's episodes (with
    its candidates, ``share.evidence_candidates`` off: these prefix scores are noise, but a root's
    slope passes now and then)."""
    rng = np.random.default_rng(0)
    states = [rng.normal(mean, 1.0, 4000).tolist() for mean in rng.normal(0.0, 1.0, 64)]
    prompt = BankPrompt("big", states, state_texts=[f"s{k}" for k in range(64)], state_scores=rng.normal(size=64).tolist())

    class FirstDraw(Recording):
        def draw(self, request):
            rollouts = super().draw(request)
            self.root = getattr(self, "root", rollouts.rewards)
            return rollouts

    shared, adaptive = FirstDraw(prompt, 40, np.random.default_rng(3)), Recording(prompt, 40, np.random.default_rng(3))
    _, shared_ledger = play(SharedSLG, shared, 1024, SearchConfig(share=ShareConfig(evidence_candidates=False)))
    _, adaptive_ledger = play(AdaptiveSLG, adaptive, 1024)
    assert len(shared.requests) == len(adaptive.requests)
    for (node, count), (node_a, count_a) in zip(shared.requests, adaptive.requests):
        assert (node == node_a).all() and (count == count_a).all()
    assert (shared_ledger.best_reward == adaptive_ledger.best_reward).all()
    repeated = (np.diff(np.sort(shared.root, axis=1), axis=1) == 0).any(axis=1)
    assert repeated.sum() >= 5  # the redraws happen, so the check is not vacuous


# --- continuous rewards at budgets without halving ---------------------------------------------


def continuous_root(seed, batch=50, width=24, signal=1.0, score_noise=0.7, reward_noise=1.2):
    """Root rollouts of distinct states (as in a world): prefix score and reward each read the
    state's mean with independent normal errors."""
    rng = np.random.default_rng(seed)
    mean = signal * rng.standard_normal((batch, width))
    score = mean + score_noise * rng.standard_normal((batch, width))
    rewards = mean + reward_noise * rng.standard_normal((batch, width))
    index = np.broadcast_to(np.arange(width), (batch, width)).copy()
    return Rollouts(rewards, np.ones((batch, width), bool), None, index, score)


def test_the_prefix_slope_is_the_least_squares_slope_of_reward_on_score():
    root = continuous_root(0)
    slope = prefix_slope(root)
    for b in range(root.rewards.shape[0]):
        assert slope[b] == pytest.approx(np.polyfit(root.state_score[b], root.rewards[b], 1)[0], rel=1e-9)
    no_scores = Rollouts(root.rewards, root.can_branch, None, root.state_index, None)
    assert (prefix_slope(no_scores) == -np.inf).all()
    # unknown, not a number, from fewer than 3 scored pairs (two points always fit a line) or equal scores
    two_scored = np.where(np.arange(root.rewards.shape[1]) < 2, root.state_score, np.nan)
    equal = np.ones_like(root.state_score)
    for score in (two_scored, equal):
        assert (prefix_slope(Rollouts(root.rewards, root.can_branch, None, root.state_index, score)) == -np.inf).all()


def test_the_evidence_state_maximises_the_conditional_mean_of_the_state_given_score_and_reward():
    """Reference: E[m | s, r] by Gaussian conditioning on the joint covariance of (m, s, r) under the
    model s = m + e_s, r = m + e_r (Cov(s, r) = Var(m)), solved with numpy's linear algebra from the
    root's own moments: an independent route to the policy's precision weights."""
    root = continuous_root(1, width=48)
    picked = best_evidence_state(root, np.ones(root.rewards.shape[0], bool))
    checked = 0
    for b in range(root.rewards.shape[0]):
        s, r = root.state_score[b], root.rewards[b]
        cov = np.cov(np.stack([s, r]), bias=True)
        signal = cov[0, 1]
        if not 0 < signal < 0.95 * min(cov[0, 0], cov[1, 1]):  # outside the model (a floor applies)
            continue
        readings = np.stack([s - s.mean(), r - r.mean()])
        conditional_mean = np.array([signal, signal]) @ np.linalg.solve(cov, readings)
        assert picked[b] == root.state_index[b, np.argmax(conditional_mean)]
        checked += 1
    assert checked >= 45
    # a rollout that cannot branch (state_index -1) is never picked, however it scores
    cannot = Rollouts(root.rewards.copy(), root.can_branch, None, root.state_index.copy(), root.state_score.copy())
    cannot.rewards[:, 0], cannot.state_score[:, 0], cannot.state_index[:, 0] = 50.0, 50.0, -1
    assert (best_evidence_state(cannot, np.ones(root.rewards.shape[0], bool)) >= 0).all()
    # a prefix score that is noise weighs almost nothing: the pick is the best reward's state
    noisy = continuous_root(2, score_noise=50.0, reward_noise=0.3)
    picked = best_evidence_state(noisy, np.ones(noisy.rewards.shape[0], bool))
    assert np.mean(picked == np.argmax(noisy.rewards, axis=1)) > 0.9
    assert (best_evidence_state(noisy, np.zeros(noisy.rewards.shape[0], bool)) == NO_NODE).all()
    # prefix scores all equal leave every rank undefined (0 / 0): no pick, not the first rollout's state
    flat = Rollouts(root.rewards, root.can_branch, None, root.state_index, np.ones_like(root.state_score))
    assert (best_evidence_state(flat, np.ones(root.rewards.shape[0], bool)) == NO_NODE).all()


def reference_width_slope(score, rewards):
    """The least-squares slope on prefix score of each rollout's distance from the line of reward
    on prefix score, times sqrt(pi / 2): numpy's polyfit, twice."""
    line = np.polyfit(score, rewards, 1)
    return np.polyfit(score, np.abs(rewards - np.polyval(line, score)), 1)[0] * math.sqrt(math.pi / 2)


def test_a_root_of_one_prefix_score_has_no_spread_whatever_the_rounding():
    """A root that drew one state reads one prefix score (0.1 three times: a mean of
    0.10000000000000002 after rounding): its variance is 0, so the slope of reward on prefix score is
    unknown, the width slope too, and nothing fires on it; one reward everywhere alike."""
    rewards = np.array([[0.3, 0.9, 0.5, 0.2, 0.8, 0.1], [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])
    score = np.array([[0.1] * 6, [0.2, 0.9, 0.4, 0.3, 0.8, 0.1]])
    root = Rollouts(rewards, np.ones((2, 6), bool), None, np.zeros((2, 6), int), score)
    known, _, _, var_score, var_reward, covariance = root_moments(root)
    assert var_score[0] == 0.0 and var_reward[1] == 0.0 and (covariance == 0.0).all()
    assert prefix_slope(root)[0] == -np.inf and np.isnan(width_slope(root, root_moments(root))[0])
    assert not tails_fall_unsquashed(root, root_moments(root), 2.5, 0.95)[0]
    assert not rewards_saturate(root, root_moments(root)).any()


def test_the_width_slope_is_the_slope_of_each_rollout_s_distance_from_the_line():
    root = continuous_root(1)
    root.rewards[:, 3] = np.nan  # a dropped reward, a dropped prefix score, a rollout of no state: not pairs
    root.state_score[:, 5] = np.nan
    root.state_index[:, 7] = -1
    slope = width_slope(root, root_moments(root))
    for b in range(root.rewards.shape[0]):
        keep = np.ones(root.rewards.shape[1], bool)
        keep[[3, 5, 7]] = False
        assert slope[b] == pytest.approx(reference_width_slope(root.state_score[b, keep], root.rewards[b, keep]), rel=1e-9)
    equal = Rollouts(root.rewards, root.can_branch, None, root.state_index, np.ones_like(root.state_score))
    assert np.isnan(width_slope(equal, root_moments(equal))).all()  # scores that do not spread: unknown
    unscored = Rollouts(root.rewards, root.can_branch, None, root.state_index, None)
    assert np.isnan(width_slope(unscored, root_moments(root))).all()


def test_the_width_slope_s_error_is_that_of_a_least_squares_slope():
    """``width_slope_error`` against scipy's ``linregress`` of each known rollout's distance from
    numpy's line of reward on prefix score, times sqrt(pi / 2); NaN from fewer than 3 pairs. Its
    noise: over 2000 roots of 40 rollouts of states of one width, the width slopes scatter by the
    mean standard error (within 5%, the Monte Carlo error of an sd from 2000 draws is 1.6%)."""
    root = continuous_root(1)
    root.rewards[:, 3] = np.nan
    root.state_score[:, 5] = np.nan
    root.state_index[:, 7] = -1
    error = width_slope_error(root, root_moments(root))
    keep = np.ones(root.rewards.shape[1], bool)
    keep[[3, 5, 7]] = False
    for b in range(root.rewards.shape[0]):
        score, rewards = root.state_score[b, keep], root.rewards[b, keep]
        distance = np.abs(rewards - np.polyval(np.polyfit(score, rewards, 1), score))
        assert error[b] == pytest.approx(scipy.stats.linregress(score, distance).stderr * math.sqrt(math.pi / 2), rel=1e-9)
    two_scored = np.where(np.arange(root.rewards.shape[1]) < 2, root.state_score, np.nan)
    two = Rollouts(root.rewards, root.can_branch, None, root.state_index, two_scored)
    assert np.isnan(width_slope_error(two, root_moments(two))).all()
    rng = np.random.default_rng(4)
    mean = rng.standard_normal((2000, 40))
    many = Rollouts(mean + rng.standard_normal((2000, 40)), np.ones((2000, 40), bool), None,
                    np.tile(np.arange(40), (2000, 1)), mean + 0.5 * rng.standard_normal((2000, 40)))
    moments = root_moments(many)
    assert width_slope(many, moments).std() == pytest.approx(width_slope_error(many, moments).mean(), rel=0.05)


def reference_saturates(score, rewards) -> bool:
    """scipy's (biased) skewness of the residuals from numpy's least-squares line of reward on prefix
    score, over the rollouts whose score is above the mean, below -0.5 (at least 3 of them)."""
    residual = rewards - np.polyval(np.polyfit(score, rewards, 1), score)
    upper = residual[score > score.mean()]
    return len(upper) >= 3 and scipy.stats.skew(upper) < -0.5


def reference_tails_fall(score, rewards, expected_max, tail_fraction=0.95, margin=0.0) -> bool:
    """Prefix slope + E x width slope below 0 (numpy's polyfit), on the prompt's quantile scale where
    the rewards look squashed near their top (``reference_saturates``); with ``margin``, below minus
    that many E x standard errors of the width slope (scipy's ``linregress``)."""
    if reference_saturates(score, rewards):
        rewards = QuantileScale(rewards[None], tail_fraction).scores(rewards[None])[0]
    distance = np.abs(rewards - np.polyval(np.polyfit(score, rewards, 1), score))
    error = scipy.stats.linregress(score, distance).stderr * math.sqrt(math.pi / 2)
    trend = np.polyfit(score, rewards, 1)[0] + expected_max * reference_width_slope(score, rewards)
    return trend + margin * expected_max * error < 0


def narrowing_root(seed, batch, width, shrink=0.6):
    """Root rollouts of distinct normal states whose sd exp(-shrink m) falls as their mean m rises;
    prefix scores read m with noise 0.5."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((batch, width))
    score = mean + 0.5 * rng.standard_normal((batch, width))
    rewards = mean + np.exp(-shrink * mean) * rng.standard_normal((batch, width))
    index = np.broadcast_to(np.arange(width), (batch, width)).copy()
    return Rollouts(rewards, np.ones((batch, width), bool), None, index, score)


def squashed_root(seed, batch, width):
    """Root rollouts of states of one width on a latent scale (means N(2, 1), sd 1), their rewards
    squashed near the top by a logistic, as a saturating reward model's; prefix scores read the
    latent mean with noise 0.5, squashed alike."""
    rng = np.random.default_rng(seed)
    mean = 2.0 + rng.standard_normal((batch, width))
    score = scipy.special.expit(mean + 0.5 * rng.standard_normal((batch, width)))
    rewards = scipy.special.expit(mean + rng.standard_normal((batch, width)))
    index = np.broadcast_to(np.arange(width), (batch, width)).copy()
    return Rollouts(rewards, np.ones((batch, width), bool), None, index, score)


def test_rewards_saturate_where_the_upper_half_s_residuals_skew_left():
    """``rewards_saturate`` against scipy's skewness of the residuals (``reference_saturates``), on
    squashed roots (most rows) and normal ones (few); never on an unscored root, nor from fewer
    than 3 rollouts above the mean score."""
    for root in (squashed_root(1, 60, 48), narrowing_root(2, 60, 48), continuous_root(3, batch=60, width=48)):
        saturate = rewards_saturate(root, root_moments(root))
        assert saturate.tolist() == [reference_saturates(root.state_score[b], root.rewards[b]) for b in range(60)]
    squashed, normal = squashed_root(1, 60, 48), continuous_root(3, batch=60, width=48)
    assert rewards_saturate(squashed, root_moments(squashed)).mean() > 0.8
    assert rewards_saturate(normal, root_moments(normal)).mean() < 0.2
    unscored = Rollouts(squashed.rewards, squashed.can_branch, None, squashed.state_index, None)
    assert not rewards_saturate(unscored, root_moments(squashed)).any()
    few = Rollouts(squashed.rewards, squashed.can_branch, None, squashed.state_index,
                   np.where(np.arange(48) < 3, squashed.state_score, np.nan))  # 3 pairs: at most 2 above their mean
    assert not rewards_saturate(few, root_moments(few)).any()


def test_rewards_saturate_reads_only_known_rollouts_above_the_mean_score():
    """Rollouts whose reward is dropped or that have no state are left out, and a rollout exactly at
    the mean prefix score is not above it: scores of -1, 0 and +1 in equal numbers (mean 0, a third
    of the rollouts at it), against ``reference_saturates`` on the known rollouts."""
    rng = np.random.default_rng(12)
    score = np.tile(np.repeat([-1.0, 0.0, 1.0], 16), (80, 1))
    rewards = scipy.special.expit(2.0 + score + rng.standard_normal((80, 48)))
    index = np.tile(np.arange(48), (80, 1))
    rewards[:, 5], index[:, 40] = np.nan, -1  # a dropped reward; a rollout of no state (at score +1)
    root = Rollouts(rewards, index >= 0, None, index, score)
    keep = np.ones(48, bool)
    keep[[5, 40]] = False
    saturate = rewards_saturate(root, root_moments(root))
    assert saturate.tolist() == [reference_saturates(score[b, keep], rewards[b, keep]) for b in range(80)]
    assert 0.2 < saturate.mean() < 0.95


def test_an_episode_of_no_reward_reads_no_scale():
    """An episode whose rewards were all dropped, beside squashed ones whose check reads the quantile
    scale, neither fails nor fires, and the others read as they would alone (``QuantileScale`` takes
    a row of NaN only as one tied value)."""
    root = squashed_root(7, 6, 48)
    root.rewards[2] = np.nan
    falls = tails_fall_unsquashed(root, root_moments(root), 2.5, 0.95)
    assert not falls[2]
    for b in (0, 1, 3, 4, 5):
        assert falls[b] == reference_tails_fall(root.state_score[b], root.rewards[b], 2.5)


def test_tails_fall_where_the_width_s_slope_outweighs_the_mean_s():
    """``tails_fall``: prefix slope + E x width slope below 0, each from its own reference (polyfit);
    ``tails_fall_unsquashed`` the same on the prompt's quantile scale where the rewards look squashed
    (``reference_tails_fall``); neither where the prefix slope is unknown (fewer than 3 pairs), even
    if the widths fall."""
    for root in (narrowing_root(6, 60, 48), squashed_root(7, 60, 48)):
        moments = root_moments(root)
        for expected_max in (1.0, 2.66):
            own_scale = [np.polyfit(s, r, 1)[0] + expected_max * reference_width_slope(s, r) < 0
                         for s, r in zip(root.state_score, root.rewards)]
            assert tails_fall(root, moments, expected_max).tolist() == own_scale
            assert tails_fall_unsquashed(root, moments, expected_max, 0.95).tolist() == [
                reference_tails_fall(root.state_score[b], root.rewards[b], expected_max) for b in range(60)]
    root = narrowing_root(6, 60, 48)
    assert 0 < tails_fall(root, root_moments(root), 1.0).sum() < tails_fall(root, root_moments(root), 2.66).sum()
    two = Rollouts(root.rewards, root.can_branch, None, root.state_index, np.where(np.arange(48) < 2, root.state_score, np.nan))
    assert not tails_fall(two, root_moments(two), 100.0).any()
    assert not tails_fall_unsquashed(two, root_moments(two), 100.0, 0.95).any()


def test_on_squashed_rewards_the_share_rounds_width_check_reads_the_quantile_scale():
    """States of one width, squashed near the top by a logistic, look narrower the higher they sit,
    but their tails do not fall (a best of n keeps its order under a monotone map): on the rewards'
    own scale (``tails_fall``) the check fires in 92 of these 200 roots of 48 at E(160) = 2.5; where
    ``tails_fall_unsquashed`` reads them on the quantile scale, in 3. States that narrow on a normal
    scale still fire in most (116 of 200)."""
    squashed, narrowing = squashed_root(8, 200, 48), narrowing_root(9, 200, 48)
    expected_max = scipy.stats.norm.ppf(1 - 1 / 160)
    on_own_scale = [np.polyfit(s, r, 1)[0] + expected_max * reference_width_slope(s, r) < 0
                    for s, r in zip(squashed.state_score, squashed.rewards)]
    assert np.sum(on_own_scale) >= 60
    assert tails_fall(squashed, root_moments(squashed), expected_max).tolist() == on_own_scale
    assert tails_fall_unsquashed(squashed, root_moments(squashed), expected_max, 0.95).sum() <= 10
    assert tails_fall_unsquashed(narrowing, root_moments(narrowing), expected_max, 0.95).mean() > 0.5


def test_the_best_reward_state_is_that_of_the_best_known_reward():
    """``best_reward_state``: the state of the highest reward among the rollouts whose state, prefix
    score and reward are known; NO_NODE outside ``mine`` or where none is known."""
    rewards = np.array([[0.3, 2.0, 1.0, 5.0, 0.1], [0.3, 2.0, 1.0, 5.0, 0.1]])
    index = np.array([[0, 1, 0, -1, 4], [0, 1, 0, 3, 4]])  # row 0: the best reward cannot branch
    score = np.array([[0.1, np.nan, 0.2, 0.3, 0.0], [0.1, 0.2, 0.2, 0.3, 0.0]])  # row 0: the second unscored
    root = Rollouts(rewards, index >= 0, None, index, score)
    assert best_reward_state(root, np.array([True, True]), root_moments(root)).tolist() == [0, 3]
    assert best_reward_state(root, np.array([False, True]), root_moments(root)).tolist() == [NO_NODE, 3]
    unknown = Rollouts(rewards, index >= 0, None, index, np.full_like(score, np.nan))
    assert (best_reward_state(unknown, np.array([True, True]), root_moments(unknown)) == NO_NODE).all()


def test_the_width_slope_reads_how_a_state_s_sd_changes_with_its_prefix_score():
    """Closed form: prefix scores that read the states' means exactly (s = m) and states of sd
    1 + b m, normal, so a reward's distance from the line m has mean sqrt(2 / pi) (1 + b m): the width
    slope is b. 200,000 rollouts a row, m uniform on [-1, 1]: the slope's standard error is about
    sqrt(pi / 2) sqrt((1 - 2 / pi) 3 / 200,000) = 0.003, and the tolerance 5 of them."""
    rng = np.random.default_rng(2)
    for b in (-0.3, 0.0, 0.2):
        mean = rng.uniform(-1.0, 1.0, (4, 200_000))
        rewards = mean + (1.0 + b * mean) * rng.standard_normal(mean.shape)
        index = np.broadcast_to(np.arange(mean.shape[1]), mean.shape).copy()
        root = Rollouts(rewards, np.ones(mean.shape, bool), None, index, mean)
        assert width_slope(root, root_moments(root)) == pytest.approx(np.full(4, b), abs=0.015)


def test_from_160_slg_adaptive_s_candidates_rank_by_prefix_score_and_reward_where_those_track():
    """The episodes that run slg_adaptive (N >= 160, states not narrow) screen the root rollouts that
    rank first by E[state mean | prefix score, reward], where the root's slope of reward on prefix
    score passes ``share.min_prefix_slope`` and its states' tails do not fall as prefix scores rise
    (that slope plus E(N) times the width slope not below 0, ``share.width_check``, on the rewards'
    own scale); by reward elsewhere, or with ``share.evidence_candidates`` off. Reference: Gaussian
    conditioning on the root's own covariance of (s, r), solved with numpy's linear algebra, as in
    the test above; the slopes from numpy's polyfit, E(N) from scipy's normal quantile (the quantile
    rule); candidates from a full sort."""
    root = continuous_root(3, batch=100, width=48)
    rng = np.random.default_rng(4)
    root.state_score[80:] = rng.standard_normal((20, 48))  # 20 rows whose scores are noise
    # 40 rows whose states narrow fast as their means rise: the wide low ones have the best tails
    mean = rng.standard_normal((40, 48))
    root.state_score[40:80] = mean + 0.5 * rng.standard_normal((40, 48))
    root.rewards[40:80] = mean + np.exp(-mean) * rng.standard_normal((40, 48))
    candidates, budget = 10, 256
    picked = SharedSLG(budget, 100)._pick_states(root, candidates, stable=False)
    unchecked = SharedSLG(budget, 100, SearchConfig(share=ShareConfig(width_check=False)))._pick_states(
        root, candidates, stable=False)
    by_reward = SharedSLG(budget, 100, SearchConfig(share=ShareConfig(evidence_candidates=False)))._pick_states(
        root, candidates, stable=False)
    expected_max = scipy.stats.norm.ppf(1 - 1 / budget)
    checked = {"evidence": 0, "tails fall": 0, "reward": 0}
    falls_by_rows = {"normal": 0, "narrowing": 0}
    for b in range(root.rewards.shape[0]):
        s, r = root.state_score[b], root.rewards[b]
        cov = np.cov(np.stack([s, r]), bias=True)
        top_reward = np.argsort(-r, kind="stable")[:candidates]
        assert (by_reward[b] == top_reward).all()
        slope = np.polyfit(s, r, 1)[0]
        if slope < ShareConfig().min_prefix_slope:  # scores that do not track rewards
            assert (picked[b] == top_reward).all() and (unchecked[b] == top_reward).all()
            checked["reward"] += 1
        elif 0 < cov[0, 1] < 0.95 * min(cov[0, 0], cov[1, 1]):  # within the model (no floor applies)
            conditional_mean = np.array([cov[0, 1]] * 2) @ np.linalg.solve(cov, np.stack([s - s.mean(), r - r.mean()]))
            top_evidence = np.argsort(-conditional_mean, kind="stable")[:candidates]
            assert (unchecked[b] == top_evidence).all()
            if slope + expected_max * reference_width_slope(s, r) < 0:
                assert (picked[b] == top_reward).all()
                checked["tails fall"] += 1
                falls_by_rows["normal" if b < 40 else "narrowing"] += 1
            else:
                assert (picked[b] == top_evidence).all()
                checked["evidence"] += 1
    assert checked["evidence"] >= 30 and checked["reward"] >= 15
    # the check fires on most narrowing rows (24 of the 40) and seldom on normal ones (2 of 40: noise)
    assert falls_by_rows["narrowing"] >= 20 and falls_by_rows["normal"] <= 4


def test_a_state_the_root_drew_again_can_be_several_candidates_by_evidence():
    """Each root rollout ranks on its own, so a state drawn again is as many candidates as its rollouts
    that rank high, as slg_adaptive's by reward; a rollout whose prefix score is unknown is none."""
    rewards = np.array([[0.9, 1.0, 0.2, 0.1, 0.3, 0.0, -0.5, 0.8]])
    index = np.array([[0, 0, 2, 3, 4, 5, 6, 0]])  # rollouts 0, 1 and 7 are one state
    score = np.array([[2.0, 2.0, 0.1, 0.0, 0.3, -0.2, -1.0, 2.0]])
    score_dropped = score.copy()
    score_dropped[0, 4] = np.nan
    for scores, expected in ((score, [1, 0, 7, 4]), (score_dropped, [1, 0, 7, 2])):
        root = Rollouts(rewards, np.ones_like(rewards, bool), None, index, scores)
        assert prefix_slope(root)[0] >= ShareConfig().min_prefix_slope
        assert SharedSLG(256, 1)._pick_states(root, 4, stable=False)[0].tolist() == expected


def test_random_state_selection_keeps_its_random_candidates():
    """``state_selection=random`` (the reference's option) is the user's choice of candidates: prefix
    scores that track rewards do not replace it; the candidates are slg_adaptive's, draw for draw."""
    root = continuous_root(5, batch=40, width=48)
    config = SearchConfig(state_selection=StateSelection.random)
    shared = SharedSLG(256, 40, config, rng=3)._pick_states(root, 10, stable=False)
    adaptive = AdaptiveSLG(256, 40, config, rng=3)._pick_states(root, 10, stable=False)
    assert (prefix_slope(root) >= ShareConfig().min_prefix_slope).mean() > 0.9
    assert (shared == adaptive).all()


def test_candidates_by_evidence_pay_where_one_reward_is_a_noisy_reading_of_its_state():
    """gaussian (states as wide as the spread between them) at N = 256: a candidate picked on its one
    reward is often a lucky draw of a mediocre state. Paired on 20,000 episodes, candidates by prefix
    score and reward gain +0.071 +- 0.003 over candidates by reward (one standard error; both from the
    same draws)."""
    from tests.core.test_policies import play_paired

    world = make_world("gaussian")
    off = SearchConfig(share=ShareConfig(evidence_candidates=False))
    _, by_evidence = play_paired("slg_share", 256, world, 20_000, 11)
    _, by_reward = play_paired("slg_share", 256, world, 20_000, 11, off)
    difference = by_evidence.best_reward - by_reward.best_reward
    stderr = difference.std(ddof=1) / math.sqrt(difference.size)
    assert difference.mean() > 0.03 and difference.mean() > 5 * stderr


def narrowing_bank_prompt(k: int, widen: float = 1.0) -> BankPrompt:
    """A bank prompt whose 16 states narrow as their means rise: means N(0, 1), sds ``widen`` x
    exp(-m / 2), 2000 rewards each; prefix scores read the means with noise 0.5."""
    rng = np.random.default_rng(k)
    means = rng.normal(0.0, 1.0, 16)
    return BankPrompt(f"p{k}", [rng.normal(m, widen * np.exp(-0.5 * m), 2000).tolist() for m in means],
                      state_texts=[f"s{j}" for j in range(16)], state_scores=(means + rng.normal(0.0, 0.5, 16)).tolist())


def narrowing_bank_runs(budget: int, prompts: int = 20, episodes: int = 200) -> dict:
    """The best rewards of best-of-N ("bon") and of ``slg_share`` with ("checked") and without
    ("unchecked") the width check on ``narrowing_bank_prompt``s, every run on the same draws."""
    runs = {}
    for name, policy_class, config in (("bon", BestOfN, SearchConfig()), ("checked", SharedSLG, SearchConfig()),
                                       ("unchecked", SharedSLG, SearchConfig(share=ShareConfig(width_check=False)))):
        best = []
        for k in range(prompts):
            policy = policy_class(budget, episodes, config, rng=np.random.default_rng(k))
            source = BankSource(narrowing_bank_prompt(k), episodes, np.random.default_rng(100 + k))
            best.append(run_episodes(policy, source).best_reward)
        runs[name] = np.concatenate(best)
    return runs


def assert_restores_level(runs: dict, checked: str, unchecked: str, below: float):
    """Paired on the same draws: ``unchecked`` below ``runs["bon"]`` by ``below`` standard errors,
    ``checked`` not below it by 2, and above ``unchecked`` by 10."""
    def z(a, b):
        difference = runs[a] - runs[b]
        return difference.mean() / (difference.std(ddof=1) / math.sqrt(difference.size))
    assert z(unchecked, "bon") < -below
    assert z(checked, "bon") > -2
    assert z(checked, unchecked) > 10


def test_where_widths_fall_as_prefix_scores_rise_the_candidates_rank_by_reward():
    """``narrowing_bank_prompt``: the wide states of low mean have the best tails (the best of 256
    draws is about m + 2.66 sd: 4.1 at m = -1.5, 2.7 at m = 1.5), but prefix score and reward rank the
    narrow high ones first, and screening those never finds a wide one. At N = 256, 20 prompts x 200
    episodes, paired on the same draws (one standard error): without the width check -0.323 +- 0.023
    against best-of-N; with it (the default) +0.062 +- 0.027, +0.386 +- 0.018 over no check. The test
    asserts below -5, above -2 and above 10 standard errors."""
    assert_restores_level(narrowing_bank_runs(256), "checked", "unchecked", below=5)


class KeepingResults(BankSource):
    """A ``BankSource`` that keeps every request's nodes and counts, and every result."""

    def __init__(self, *args):
        super().__init__(*args)
        self.requests, self.results = [], []

    def draw(self, request):
        result = super().draw(request)
        self.requests.append((request.node.copy(), request.count.copy()))
        self.results.append(result)
        return result


@pytest.mark.parametrize("budget, first_root, top_up, widen", [(128, 38, 26, 1.0), (48, 16, 8, 1.0), (128, 38, 26, 2.0)])
def test_below_160_where_tails_fall_the_share_rounds_take_the_best_reward_s_state(budget, first_root, top_up, widen):
    """``narrowing_bank_prompt``: slg_adaptive's root, topped up to N / 2, then the state of the share
    rounds. Where the topped-up root holds at least 32 rollouts (N = 128: 64) and it says the states'
    tails fall (``reference_tails_fall`` at E(N) from scipy's normal quantile), by 1.5 standard errors
    of the width slope beyond 0 where its states are wide (Var(r) - Cov(s, r) at least 4 Cov(s, r),
    numpy's moments), that state is the one of the root's best reward; elsewhere, on a root of fewer
    (N = 48: 24, too few to read a slope of widths) and where wide states' tails fall by less
    (``widen`` = 2: most roots read as wide), the one that prefix score and reward rank first
    (``best_evidence_state``)."""
    episodes = 300
    source = KeepingResults(narrowing_bank_prompt(3, widen), episodes, np.random.default_rng(5))
    play(SharedSLG, source, budget)
    root = _joined(source.results[0], source.results[1])
    shared = source.requests[1][1] == top_up  # the episodes whose prefix scores track rewards: topped up
    assert (source.requests[0][1] == first_root).all() and shared.mean() > 0.6
    node = np.full(episodes, NO_NODE)  # each episode's first request to a state after the top-up
    for nodes, counts in source.requests[2:]:
        node = np.where((node == NO_NODE) & (nodes >= 0) & (counts > 0), nodes, node)
    assert (node[shared] >= 0).all()
    expected_max = scipy.stats.norm.ppf(1 - 1 / budget)
    falls, clearly, wide = np.zeros(episodes, bool), np.zeros(episodes, bool), np.zeros(episodes, bool)
    for b in np.flatnonzero(shared):  # the others' roots are the first root and NaNs
        falls[b] = reference_tails_fall(root.state_score[b], root.rewards[b], expected_max)
        clearly[b] = reference_tails_fall(root.state_score[b], root.rewards[b], expected_max, margin=1.5)
        covariance = np.cov(root.state_score[b], root.rewards[b], bias=True)
        wide[b] = covariance[1, 1] - covariance[0, 1] >= 4 * covariance[0, 1]
    by_evidence = best_evidence_state(root, np.ones(episodes, bool))
    by_reward = root.state_index[np.arange(episodes), np.argmax(root.rewards, axis=1)]
    assert falls[shared].mean() > 0.1 and (by_reward != by_evidence)[shared & falls].mean() > 0.3
    checked = (falls & ~wide) | (clearly & wide) if first_root + top_up >= 32 else np.zeros(episodes, bool)
    assert (node[shared & checked] == by_reward[shared & checked]).all()
    assert (node[shared & ~checked] == by_evidence[shared & ~checked]).all()
    # the test tells each gate: both kinds of episode occur, and the picks differ in those it leaves out
    if widen > 1:
        unclear = shared & falls & wide & ~clearly
        assert unclear.sum() >= 10 and (by_reward != by_evidence)[unclear].sum() >= 5
        assert (shared & clearly & wide).sum() >= 5 and (by_reward != by_evidence)[shared & clearly & wide].sum() >= 3


def test_below_160_where_widths_fall_the_share_rounds_stay_level_with_best_of_n():
    """``narrowing_bank_prompt`` at N = 128, where the share rounds pick one state by prefix score and
    reward: the narrow high states it ranks first hold no tail, and without the width check it falls
    below best-of-N. 20 prompts x 200 episodes, paired on the same draws (one standard error): without
    the check -0.171 +- 0.021 against best-of-N; with it (the default) -0.030 +- 0.024, +0.141 +- 0.011
    over no check. The test asserts below -5, above -2 and above 10 standard errors."""
    assert_restores_level(narrowing_bank_runs(128), "checked", "unchecked", below=5)


def two_kinds_bank_prompt(k: int) -> BankPrompt:
    """A bank prompt of 16 states of two kinds: 8 wide ones of low mean (means -0.5, sds 1.5) and 8
    narrow high ones (means 0.5, sds 0.2), each mean moved by N(0, 0.2); 2000 rewards each, prefix
    scores read the means with noise 0.5. The within-state variance (1.15) is about four times that
    between states (0.29): the root reads most of these roots as wide."""
    rng = np.random.default_rng(k)
    means = np.r_[np.full(8, -0.5), np.full(8, 0.5)] + rng.normal(0.0, 0.2, 16)
    sds = np.r_[np.full(8, 1.5), np.full(8, 0.2)]
    return BankPrompt(f"p{k}", [rng.normal(m, sd, 2000).tolist() for m, sd in zip(means, sds)],
                      state_texts=[f"s{j}" for j in range(16)], state_scores=(means + rng.normal(0.0, 0.5, 16)).tolist())


def two_kinds_runs(monkeypatch, budget: int, variants: dict) -> dict:
    """Per variant (name: (policy class, the share module's settings for it, the others at their
    defaults)), the best rewards of 200 episodes on each of 40 ``two_kinds_bank_prompt``s, every
    variant on the same draws."""
    defaults = {setting: getattr(share_module, setting) for _, settings in variants.values() for setting in settings}
    runs = {}
    for name, (policy_class, settings) in variants.items():
        for setting, value in (defaults | settings).items():
            monkeypatch.setattr(share_module, setting, value)
        runs[name] = np.concatenate([
            run_episodes(policy_class(budget, 200, SearchConfig(), rng=np.random.default_rng(k)),
                         BankSource(two_kinds_bank_prompt(k), 200, np.random.default_rng(100 + k))).best_reward
            for k in range(40)])
    return runs


def test_wide_states_whose_tails_clearly_fall_take_the_best_reward_s_state(monkeypatch):
    """``two_kinds_bank_prompt`` at N = 128: the best of 64 (2.41 sds above the mean) is about 3.1
    from a wide state and 0.98 from a narrow one, but prefix score and reward rank the narrow ones
    first. The states read as wide, where the width check fires only if the tails fall by 1.5
    standard errors of the width slope (``WIDE_MARGIN``); with no check in wide states (an infinite margin) it
    falls below best-of-N.
    40 prompts x 200 episodes, paired on the same draws (one standard error): with no check in wide
    roots -0.076 +- 0.011 against best-of-N, with the margin +0.002 +- 0.011, +0.078 +- 0.004 over no
    check; measured, as here, with the prompt check of a narrow first half off (``NARROW_FIRST_HALF``
    = 0). The test asserts below -4, above -2 and above 10 standard errors, and that the default (with
    that check) is above best-of-N by 2: +0.070 +- 0.011."""
    runs = two_kinds_runs(monkeypatch, 128, {
        "bon": (BestOfN, {}), "default": (SharedSLG, {}),
        "margin": (SharedSLG, {"NARROW_FIRST_HALF": 0.0}),  # the width check alone
        "no check in wide roots": (SharedSLG, {"NARROW_FIRST_HALF": 0.0, "WIDE_MARGIN": np.inf})})
    assert_restores_level(runs, "margin", "no check in wide roots", below=4)
    difference = runs["default"] - runs["bon"]
    assert difference.mean() > 2 * difference.std(ddof=1) / math.sqrt(difference.size)


def few_level_root(seed, batch=60, width=16, states=6):
    """Root rollouts through a few states each (a state's rollouts share its first index and prefix
    score), rewards on five levels; a row's rollout 3 has its reward dropped (NaN), and its rollout 5
    could not branch (no state, no prefix score) and scored above every level. Row 0's known rewards
    are all equal (a rank by reward alone is undefined there), as are row 1's prefix scores."""
    rng = np.random.default_rng(seed)
    through = rng.integers(0, states, size=(batch, width))
    through[:, 5] = states  # a state of its own, so no other rollout names rollout 5 as its state
    index = np.array([[int(np.argmax(row == k)) for k in row] for row in through])  # first rollout of the state
    score = rng.normal(scale=0.5, size=(batch, states + 1))[np.arange(batch)[:, None], through]
    rewards = rng.integers(0, 5, size=(batch, width)) / 4.0
    rewards[0] = 0.5
    score[0, through[0] == through[0, 0]] = -1.0  # rollout 0's state ranks last on its prefix
    score[1] = 0.2
    rewards[:, 3] = np.nan
    index[:, 5], score[:, 5], rewards[:, 5] = -1, np.nan, 2.0
    return Rollouts(rewards, index >= 0, None, index, score)


def reference_pick(root: Rollouts, row: int, reward_weight: float, candidate=None, lead_gap: float = math.inf,
                   rival_gap: float | None = ShareConfig().rival_gap) -> int:
    """The few-levels pick of one root row, in plain Python with the statistics module (population
    sds): over the rollouts whose state, prefix score and reward are known, the one whose prefix score
    plus ``reward_weight`` times its reward ranks first (each in sds of those rollouts), among those
    whose reward ``candidate`` accepts (all by default); its state if its prefix score is
    ``prefix_gap`` sds of every reward of the row above the mean prefix score, or ``lead_gap`` sds
    above the prefix score of every other state the row drew (at least one; inf: never), and in either
    case no other state the row drew twice or more scores within ``rival_gap`` sds of it (None: no such
    rule), else NO_NODE."""
    import statistics

    pairs = [(s, r, i) for s, r, i in zip(root.state_score[row], root.rewards[row], root.state_index[row])
             if i >= 0 and not math.isnan(s) and not math.isnan(r)]
    scores, rewards = [p[0] for p in pairs], [p[1] for p in pairs]

    def in_sds(x, xs):
        sd = statistics.pstdev(xs)
        return (x - statistics.fmean(xs)) / sd if sd > 0 else 0.0

    rank = [in_sds(s, scores) + reward_weight * in_sds(r, rewards) if candidate is None or candidate(r) else -math.inf
            for s, r, _ in pairs]
    if max(rank) == -math.inf:
        return NO_NODE
    s, _, state = pairs[int(np.argmax(rank))]
    spread = statistics.pstdev([r for r in root.rewards[row] if not math.isnan(r)])
    others = [s2 for s2, _, i in pairs if i != state]
    leads = bool(others) and s - max(others) > lead_gap * spread
    drawn = [i for _, _, i in pairs]
    rival = rival_gap is not None and any(i != state and drawn.count(i) >= 2 and s - s2 <= rival_gap * spread
                                          for s2, _, i in pairs)
    clears = s - statistics.fmean(scores) > ShareConfig().prefix_gap * spread or leads
    return state if spread > 0 and clears and not rival else NO_NODE


@pytest.mark.parametrize("reward_weight, lead_gap, rival_gap", [(0.0, None, 0.1), (0.25, None, 0.1), (1.0, None, 0.1),
                                                             (0.0, 0.25, 0.1), (0.25, 1.0, 0.1), (0.25, None, None),
                                                             (0.25, None, 0.5)])
def test_the_few_levels_pick_ranks_prefix_score_plus_weighted_reward_in_root_sds(reward_weight, lead_gap, rival_gap):
    """Reference: a plain loop with the statistics module (population sds) over the rollouts whose
    state, prefix score and reward are known; the gates on the picked prefix's gap over the mean
    prefix score and its lead over every other state's, and no common rival within the rival gap, in
    sds of every reward the root has."""
    root = few_level_root(int(reward_weight * 4))
    # five levels shared by every state: a grid, where the rule (below) leaves only the best level's states of rows that look narrow
    config = SearchConfig(share=ShareConfig(reward_weight=reward_weight, grid_best_level=False, lead_gap=lead_gap,
                                            rival_gap=rival_gap))
    batch = root.rewards.shape[0]
    picked = SharedSLG(32, batch, config)._best_prefix_state(root, np.ones(batch, bool))
    used = rivalled = 0
    for b in range(batch):
        expected = reference_pick(root, b, reward_weight, lead_gap=math.inf if lead_gap is None else lead_gap,
                                  rival_gap=rival_gap)
        assert picked[b] == expected, b
        used += expected != NO_NODE
        rivalled += expected != reference_pick(root, b, reward_weight, lead_gap=math.inf if lead_gap is None else lead_gap,
                                               rival_gap=None)
    assert 0 < used < batch  # the gates both pass and fail among these rows
    assert (rivalled > 0) == (rival_gap is not None)  # and the rival rule takes some rows' share
    if rival_gap is None:  # (row 0's pick has a common rival)
        assert picked[0] not in (NO_NODE, 0)  # equal rewards: the prefix decides
    assert picked[1] == NO_NODE  # equal prefixes: no gap


@pytest.mark.parametrize("lead_gap, shared", [(0.25, True), (None, False), (0.75, False)])
def test_a_common_state_that_leads_every_other_state_the_root_drew_gets_the_share(lead_gap, shared):
    """Row 0: 12 of 16 root rollouts through state 0 (prefix score 1.0), two each through states 12
    and 14 (0.8, 0.7); rewards 0 and 1 alternating, an sd of 0.5. The mean prefix score is 0.9375,
    0.0625 below state 0's: under the prefix gap (0.5 x 0.5). State 0 leads the next state by 0.2,
    above 0.25 x 0.5 and below 0.75 x 0.5. Row 1: the root drew state 0 alone, which leads no other."""
    through = np.array([[0] * 12 + [12, 12, 14, 14], [0] * 16])
    score = np.where(through == 0, 1.0, np.where(through == 12, 0.8, 0.7))
    rewards = np.tile(np.array([0.0, 1.0]), (2, 8))
    root = Rollouts(rewards, np.ones_like(rewards, bool), None, through, score)
    config = SearchConfig(share=ShareConfig(lead_gap=lead_gap, reward_weight=0.0, grid_best_level=False))
    picked = SharedSLG(32, 2, config)._best_prefix_state(root, np.ones(2, bool))
    assert picked[0] == (0 if shared else NO_NODE) and picked[1] == NO_NODE


@pytest.mark.parametrize("rival_drawn, rival_score, rival_gap, ungated, shared", [
    (2, 0.99, 0.1, False, False),  # a common rival: fresh prompt draws reach it as often as the root did
    (1, 0.99, 0.1, False, True),  # drawn once, as every state of a simulated world: no rival
    (2, 0.99, None, False, True),  # the rule off
    (2, 0.99, 0.1, True, False),  # from share.ungated_from (off a grid) the pick needs no prefix gap, but a rival still counts
    (1, 0.99, 0.1, True, True),  # ... and with none it shares
    (2, 1.0, 0.0, False, False),  # a rival exactly at the floor (no gap, the same score) is one
    (2, 0.9, 0.1, False, True),  # 0.1 below the pick, beyond 0.1 x 0.5: no rival
])
def test_a_common_state_that_reads_as_well_as_the_pick_takes_its_share(rival_drawn, rival_score, rival_gap, ungated, shared):
    """16 root rollouts: two through state 0 (prefix score 1.0), one or two through state 2 (0.99,
    within 0.1 x the rewards' sd of 0.5), the others through states of their own scoring 0; rewards 0
    and 1 alternating. State 0 ranks first and clears the prefix gap (1.0 against a mean of about 0.25,
    above 0.5 x 0.5); state 2 reads as well, and where the root drew it twice it is a common rival
    (docs/design-record.md, "A common rival")."""
    through = np.array([[0, 0] + [2] * rival_drawn + list(range(2 + rival_drawn, 16))])  # a state: its first rollout's index
    score = np.where(through == 0, 1.0, np.where(through == 2, rival_score, 0.0))
    rewards = np.tile(np.array([0.0, 1.0]), (1, 8))
    root = Rollouts(rewards, np.ones_like(rewards, bool), None, through, score)
    config = SearchConfig(share=ShareConfig(rival_gap=rival_gap, reward_weight=0.0, grid_best_level=False))
    picked = SharedSLG(32, 1, config)._best_prefix_state(root, np.ones(1, bool), ungated=np.array([ungated]))
    assert picked[0] == (0 if shared else NO_NODE)


def test_the_rival_rule_changes_nothing_where_every_prompt_draw_is_a_new_state():
    """A simulated world's prompt draws each reveal a state of their own, so none is drawn twice and no
    state is a common rival: on discrete rewards (few levels, where the gate runs) slg_share plays the
    same episodes with the rule as without, to the bit, and shares in many of them."""
    from tests.core.test_policies import play_paired

    world = make_world("discrete", levels=20.0)
    policy, ruled = play_paired("slg_share", 32, world, 2000, 32, None)
    _, unruled = play_paired("slg_share", 32, world, 2000, 32, SearchConfig(share=ShareConfig(rival_gap=None)))
    assert np.array_equal(ruled.best_reward, unruled.best_reward)
    assert (policy.selected >= 0).mean() > 0.2  # a state got its share in many episodes


def test_on_a_grid_the_lead_gate_reads_every_state_the_root_drew_not_only_the_candidates():
    """A grid of narrow states (each state's rollouts at one level, levels 1.0 and 0.0 shared by two
    states each; Var(r) - Cov(s, r) = 0.085 - 0.167 below half of Cov(s, r), Var(r) below Var(s) =
    0.54): only the two states at the best level, 1.0, are candidates. The pick, state 10 (prefix
    score 0.9), clears no prefix gap (0.9 - 0.79 below 0.5 x 0.29) and leads the other candidate
    (0.5) by far, but the common state 0 the root also drew scores 1.2: it leads nothing."""
    spec = [(0, 1.2, 0.75)] * 10 + [(10, 0.9, 1.0)] * 2 + [(12, 0.5, 1.0)] * 2 + [(14, -1.0, 0.0), (15, -1.1, 0.0)]
    index, score, rewards = (np.array([[row[i] for row in spec]]) for i in range(3))
    root = Rollouts(rewards.astype(float), np.ones(rewards.shape, bool), None, index, score.astype(float))
    assert on_a_grid(root)[0]
    config = SearchConfig(share=ShareConfig(lead_gap=0.25))
    assert SharedSLG(32, 1, config)._best_prefix_state(root, np.ones(1, bool))[0] == NO_NODE


def grid_reference(root: Rollouts, row: int) -> bool:
    """Whether a root row is a grid of levels, counted plainly: for each reward, the known states that
    reached it less one, summed; at least a tenth of the row's scored rewards, and at least one."""
    rewards, states = root.rewards[row], root.state_index[row]
    across = sum(len({s for r2, s in zip(rewards, states) if r2 == r and s >= 0}) - 1
                 for r in set(rewards[~np.isnan(rewards)].tolist())
                 if any(r2 == r and s >= 0 for r2, s in zip(rewards, states)))
    return across >= max(1.0, 0.1 * np.count_nonzero(~np.isnan(rewards)))


def test_a_grid_of_levels_is_rewards_repeated_across_states_not_within_one():
    within = Rollouts(np.array([[0.5, 0.5, 0.7, 0.2]]), np.ones((1, 4), bool), None,
                      np.array([[0, 0, 2, 3]]), np.zeros((1, 4)))  # one state's response twice
    across = Rollouts(within.rewards, within.can_branch, None, np.array([[0, 1, 2, 3]]), within.state_score)
    unknown = Rollouts(within.rewards, within.can_branch, None, np.array([[-1, 1, 2, 3]]), within.state_score)
    assert not on_a_grid(within)[0] and on_a_grid(across)[0] and not on_a_grid(unknown)[0]
    rng = np.random.default_rng(0)
    for width in (12, 20, 40):  # one repeat across states is enough below 20 scored rewards, two from 20
        rewards = rng.permutation(width).astype(float)[None, :]
        for copies in range(4):
            rewards[0, 1:1 + copies] = rewards[0, 0]
            root = Rollouts(rewards.copy(), np.ones((1, width), bool), None, np.arange(width)[None, :],
                            np.zeros((1, width)))
            assert on_a_grid(root)[0] == grid_reference(root, 0) == (copies >= max(1, 0.1 * width)), (width, copies)


def narrow_reference(root: Rollouts, row: int) -> bool:
    """Whether a row's states look narrower than the spread between them, and read more precisely by
    a rollout than by their prefix, in plain Python: over the rollouts whose state, prefix score and
    reward are known, the rewards' population variance less the covariance of score and reward (the
    states' own width) below half that covariance (their spread), and below the scores' variance less
    the covariance (the prefix score's noise)."""
    pairs = [(s, r) for s, r, i in zip(root.state_score[row], root.rewards[row], root.state_index[row])
             if i >= 0 and not math.isnan(s) and not math.isnan(r)]
    mean_s, mean_r = sum(p[0] for p in pairs) / len(pairs), sum(p[1] for p in pairs) / len(pairs)
    spread = sum((s - mean_s) * (r - mean_r) for s, r in pairs) / len(pairs)
    width = sum((r - mean_r) ** 2 for _, r in pairs) / len(pairs) - spread
    prefix_noise = sum((s - mean_s) ** 2 for s, _ in pairs) / len(pairs) - spread
    return width < 0.5 * spread and width < prefix_noise


@pytest.mark.parametrize("lead_gap", [None, 0.25])
def test_on_a_grid_of_narrow_states_only_those_that_reached_the_best_level_are_picked(lead_gap):
    """Reference: the plain ranking loop of the test above over the rollouts at the row's best reward,
    where the row is a grid (``grid_reference``) of narrow states (``narrow_reference``); elsewhere
    over all of them. Rows 2-19: rewards unrelated to prefix scores (wide states); 20-39: no grid;
    40-59: rewards that follow the prefix scores onto the five levels (narrow states). The lead gate
    reads every state the root drew, not only the candidates."""
    root = few_level_root(7)
    root.rewards[:, 5] = 0.0  # the unbranchable rollout no longer holds the best reward
    rows = np.arange(20, 40)
    root.rewards[rows] += root.state_index[rows] * 1e-3  # these rows: each state's rewards its own, no grid
    narrow = slice(40, 60)  # a state's level: its prefix score plus an error of its own, then its rollouts' small noise
    error = np.random.default_rng(1).normal(scale=0.4, size=root.rewards[narrow].shape)
    error = np.take_along_axis(error, np.maximum(root.state_index[narrow], 0), axis=1)  # one per state
    noise = np.random.default_rng(2).normal(scale=0.1, size=error.shape)
    follows = np.clip(np.round(2 + 3 * (root.state_score[narrow] + error) + noise), 0, 4) / 4
    keep = np.isnan(root.rewards[narrow]) | (root.state_index[narrow] < 0)  # the dropped score, the unbranchable rollout
    root.rewards[narrow] = np.where(keep, root.rewards[narrow], follows)
    batch, weight = root.rewards.shape[0], ShareConfig().reward_weight
    picked = SharedSLG(32, batch, SearchConfig(share=ShareConfig(lead_gap=lead_gap)))._best_prefix_state(root, np.ones(batch, bool))
    ruled = 0
    for b in range(batch):
        rule = grid_reference(root, b) and narrow_reference(root, b)
        ruled += rule
        top = max(r for r in root.rewards[b] if not math.isnan(r))
        expected = reference_pick(root, b, weight, (lambda r, top=top: r == top) if rule else None,
                                  math.inf if lead_gap is None else lead_gap)
        assert picked[b] == expected, b
    assert sum(grid_reference(root, b) and not narrow_reference(root, b) for b in range(batch)) >= 10
    assert 10 <= ruled < batch - 10  # grids of narrow states, grids of wide ones, and no grid


def test_on_a_grid_of_narrow_states_the_best_prefix_below_the_best_level_is_passed_over():
    """One root on four levels, rewards tracking prefix scores: "A" reads best but reached 0.5, "B"
    reads a little lower and reached the best level, 0.75. Prefix score plus a quarter of the reward
    ranks A first; on the grid B is the one a level from beating the best."""
    scores = {"A": 1.0, "B": 0.8, "G": 0.4, "C": 0.2, "D": 0.0, "E": -0.2, "F": -0.5, "H": -0.8}
    rewards = {"A": 0.5, "B": 0.75, "G": 0.5, "C": 0.25, "D": 0.25, "E": 0.0, "F": 0.0, "H": 0.0}
    names = ["A", "A", "B", "B", "G", "C", "C", "D", "E", "E", "F", "H"]
    index = np.array([[names.index(n) for n in names]])
    root = Rollouts(np.array([[rewards[n] for n in names]]), np.ones((1, len(names)), bool), None, index,
                    np.array([[scores[n] for n in names]]))
    assert grid_reference(root, 0) and narrow_reference(root, 0)
    off = SearchConfig(share=ShareConfig(grid_best_level=False))
    assert SharedSLG(32, 1, off)._best_prefix_state(root, np.ones(1, bool))[0] == names.index("A")
    # A, drawn twice and reading better, is a common rival, which by default takes B's share (off here: the grid rule alone)
    rule_alone = SearchConfig(share=ShareConfig(rival_gap=None))
    assert SharedSLG(32, 1, rule_alone)._best_prefix_state(root, np.ones(1, bool))[0] == names.index("B")
    assert SharedSLG(32, 1)._best_prefix_state(root, np.ones(1, bool))[0] == NO_NODE


def test_on_a_grid_of_narrow_states_a_prefix_read_more_precisely_than_a_rollout_keeps_its_pick():
    """The root above with prefix scores that read each state's mean almost exactly (the scores' noise
    below the rewards' own): "A" reads best and is best, and "B" reached the best level by luck. The
    prefix names the state; the rule, which would pass A over for B, stays off."""
    scores = {"A": 0.6, "B": 0.5, "G": 0.45, "C": 0.3, "D": 0.2, "E": 0.05, "F": 0.0, "H": -0.1}
    rewards = {"A": 0.5, "B": 0.75, "G": 0.5, "C": 0.25, "D": 0.25, "E": 0.0, "F": 0.0, "H": 0.0}
    names = ["A", "A", "B", "B", "G", "C", "C", "D", "E", "E", "F", "H"]
    index = np.array([[names.index(n) for n in names]])
    root = Rollouts(np.array([[rewards[n] for n in names]]), np.ones((1, len(names)), bool), None, index,
                    np.array([[scores[n] for n in names]]))
    s, r = root.state_score[0], root.rewards[0]
    covariance = np.mean((s - s.mean()) * (r - r.mean()))
    assert grid_reference(root, 0) and r.var() - covariance < 0.5 * covariance  # a grid of narrow states
    assert s.var() < r.var() and not narrow_reference(root, 0)  # ... whose prefixes read more precisely
    assert SharedSLG(32, 1)._best_prefix_state(root, np.ones(1, bool))[0] == names.index("A")


def test_on_few_levels_the_reward_helps_pick_the_state():
    """discrete rewards on 10 levels with prefix scores noisier than the states' spread (prefix_noise =
    3; held out of the design): the best prefix alone often names an ordinary state, and its root
    reward tells. Paired against best-of-N at N = 32, 20,000 episodes (one standard error): +0.0154 +-
    0.0006 with reward_weight = 0.25, +0.0091 +- 0.0005 with 0 (the grid rule, where it applies, leaves
    the weight nothing to weigh: its candidates share one reward; without the rule +0.0131 and +0.0033).
    On 5 levels with prefix_noise = 5: -0.0005 +- 0.0002, -0.0015 with the weight at 0."""
    world = make_world("discrete", levels=10.0, prefix_noise=3.0)
    gain, stderr = paired_gain("slg_share", "bon", world, 32, seed=32)
    assert gain > 0.012, (gain, stderr)
    gain, stderr = paired_gain("slg_share", "bon", make_world("discrete", prefix_noise=5.0), 32, seed=32)
    assert gain > -0.001, (gain, stderr)


def test_on_a_grid_of_levels_picking_at_the_best_level_pays():
    """discrete rewards on 10 levels, states half as wide as the spread between them (sigma1 = 0.5;
    held out of the design): a state's rollouts pay only by reaching a level above the root's best,
    one step up for a state already at it. Paired against the rule switched off, 20,000 episodes at
    N = 32: +0.0028 +- 0.0002 (one standard error; +0.0045 +- 0.0004 at 64)."""
    from tests.core.test_policies import play_paired

    world = make_world("discrete", levels=10.0, sigma1=0.5)
    _, ruled = play_paired("slg_share", 32, world, 20_000, 32, None)
    _, unruled = play_paired("slg_share", 32, world, 20_000, 32, SearchConfig(share=ShareConfig(grid_best_level=False)))
    assert (ruled.best_reward - unruled.best_reward).mean() > 0.0015


def test_on_few_levels_with_narrow_states_the_repeat_check_keeps_level_with_best_of_n():
    """discrete rewards with states narrower than the prompt (sigma1 = 0.5; held out of the design): a
    state that the prefix score picks often repeats one or two levels, and its second half then goes
    to the prompt. Paired against best-of-N at N = 32, 20,000 episodes: +0.0004 +- 0.0004 with the
    repeat check, -0.0011 +- 0.0005 without it (one standard error)."""
    gain, stderr = paired_gain("slg_share", "bon", make_world("discrete", sigma1=0.5), 32, seed=32)
    assert gain > -0.0004, (gain, stderr)


def test_on_few_levels_with_very_narrow_states_a_small_first_half_of_repeats_goes_back():
    """discrete rewards on 4 levels, states five times narrower than the prompt (sigma1 = 0.2; held out
    of the design): at N = 16 the state's first half is 2 rollouts, which mostly repeat its root
    rollout's level. Giving its other 2 back to the prompt, paired against the check switched off,
    20,000 episodes: +0.0055 +- 0.0004 (one standard error); slg_share stays below best-of-N there
    (-0.0049 +- 0.0004, docs/design-record.md)."""
    world = make_world("discrete", levels=4.0, sigma1=0.2)
    off = SearchConfig(share=ShareConfig(repeat_check=False))
    from tests.core.test_policies import play_paired
    _, checked = play_paired("slg_share", 16, world, 20_000, 16, None)
    _, unchecked = play_paired("slg_share", 16, world, 20_000, 16, off)
    difference = checked.best_reward - unchecked.best_reward
    assert difference.mean() > 0.003, difference.mean()


def requests_of(world, budget, batch=400, seed=3, policy_class=SharedSLG):
    source = recording(WorldSource)(world, batch, np.random.default_rng(seed), np.random.default_rng(seed + 1))
    policy, ledger = play(policy_class, source, budget)
    return policy, source.requests, ledger


@pytest.mark.parametrize("budget, adaptive_root", [(48, 16), (64, 19), (128, 38), (159, 48)])
def test_at_small_budgets_continuous_episodes_share_where_prefix_scores_track_rewards(budget, adaptive_root):
    """gaussian at N = 48 and 64 (slg_adaptive's plan: one round, two candidates), 128 and 159 (two
    rounds, four candidates, one halving): where the root's slope of
    reward on prefix score passes min_prefix_slope, the root is topped up to N / 2 and one state gets
    0.375 N below ``share.full_share_from`` (64) and all the rest from it (its second half unless its
    first fell below the root), but for the few roots whose states look narrow by chance, which keep
    0.375 N; with prefix scores of pure noise (prefix_noise = 20) the slope fails nearly always and
    the episodes are slg_adaptive's, request for request."""
    share = ShareConfig()
    half = round(share.root_fraction * budget)
    kept = min(round(share.state_share * (1 - share.root_fraction) * budget), budget - half)  # as share.py rounds it
    to_state = budget - half if budget >= share.full_share_from else kept
    policy, requests, ledger = requests_of(make_world("gaussian"), budget)
    assert (ledger.spent == budget).all()
    state_rollouts = sum(np.where(node >= 0, count, 0) for node, count in requests)
    root_before_state = sum(np.where(node == ROOT, count, 0) for node, count in requests[:2])
    shared = root_before_state == round(share.root_fraction * budget)  # the root topped up: the share rounds
    assert shared.mean() > 0.6  # the slope passes in most episodes of this world
    assert np.isin(state_rollouts[shared], [to_state, to_state // 2, kept, kept // 2]).all()
    # states as wide as the spread between them: a root of N / 2 seldom takes them for narrow ones
    assert np.isin(state_rollouts[shared], [kept, kept // 2]).mean() < (0.1 if to_state != kept else 1.01)
    assert (state_rollouts[shared] == to_state).mean() > 0.5  # the state's first half mostly holds up
    assert (root_before_state[~shared] == adaptive_root).all()  # the others: slg_adaptive's root, then its candidates
    # a shared episode reports the state it kept, though slg_adaptive's episodes beside it end later
    assert (policy.selected[shared & (state_rollouts == to_state)] >= 0).all()
    assert (policy.selected[shared & (state_rollouts == to_state // 2)] == ROOT).all()
    # no tail fit decided a shared episode, so it reports no prediction; slg_adaptive's episodes report theirs
    assert np.isnan(policy.selected_prediction[shared]).all()
    assert np.isfinite(policy.selected_prediction[~shared]).all()

    noise = make_world("gaussian", prefix_noise=20.0)
    runs = [requests_of(noise, budget, policy_class=cls) for cls in (SharedSLG, AdaptiveSLG)]
    assert len(runs[0][1]) == len(runs[1][1])
    for (node, count), (node_a, count_a) in zip(runs[0][1], runs[1][1]):
        assert np.mean((node == node_a) & (count == count_a)) > 0.97


class MixedWorlds:
    """Episodes 0..B/2-1 from one world (by default discrete: few levels), the rest from another (by
    default gaussian: continuous): one batch in which both kinds of shared episode run side by side,
    as on a bank of several prompts. Keeps every request's nodes and counts, and every result."""

    def __init__(self, batch: int, seed: int, worlds=None):
        self.half, self.batch_size = batch // 2, batch
        worlds = worlds or (make_world("discrete"), make_world("gaussian"))
        self.parts = [WorldSource(world, self.half, np.random.default_rng(seed + k), np.random.default_rng(seed + 10 + k))
                      for k, world in enumerate(worlds)]
        self.requests, self.counts, self.results = [], [], []

    def draw(self, request):
        halves = [part.draw(replace(request, node=request.node[k * self.half:(k + 1) * self.half],
                                    count=request.count[k * self.half:(k + 1) * self.half]))
                  for k, part in enumerate(self.parts)]
        width = max(h.rewards.shape[1] for h in halves)

        def stacked(field, fill):
            arrays = [getattr(h, field) for h in halves]
            if any(a is None for a in arrays):
                return None
            return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill) for a in arrays])
        result = Rollouts(stacked("rewards", np.nan), stacked("can_branch", False), stacked("correct", False),
                          stacked("state_index", -1), stacked("state_score", np.nan))
        self.requests.append(request.node.copy())
        self.counts.append(request.count.copy())
        self.results.append(result)
        return result


def test_each_shared_episode_asks_the_state_its_own_pick_ranks_first():
    """The wiring of the two picks, each checked on its own above, in one batch at N = 64: a
    few-levels episode (discrete) asks its state rollouts of the state the best-prefix pick ranks
    first on its whole root (the root request and its top-up); an episode that shares by evidence
    (continuous rewards, its slope passes) asks those of ``best_evidence_state``'s. The two picks
    differ in many episodes, so a pick given to the other kind of episode fails here."""
    budget, batch = 64, 800
    source = MixedWorlds(batch, seed=3)
    policy = SharedSLG(budget, batch, SearchConfig(), rng=np.random.default_rng(1))
    run_episodes(policy, source)
    first_root = source.results[0]
    topped_up = source.requests[1] == ROOT  # the share rounds' top-up of the root: the shared episodes
    root = _joined(first_root, source.results[1])
    # an episode's state rollouts: the first state it asks (slg_adaptive's episodes ask candidates beside)
    asked = np.full(batch, NO_NODE)
    for node in source.requests[2:]:
        asked = np.where(asked == NO_NODE, np.where(node >= 0, node, NO_NODE), asked)
    discrete = np.arange(batch) < batch // 2
    by_prefix = topped_up & discrete
    by_evidence = topped_up & ~discrete & (prefix_slope(first_root) >= ShareConfig().min_prefix_slope)
    assert (topped_up == by_prefix | by_evidence).all()
    # where the topped-up root (32 rollouts) says the states' tails fall, by 1.5 standard errors of the
    # width slope where they are wide (as in the test above), the evidence pick is the best reward's state
    expected_max = scipy.stats.norm.ppf(1 - 1 / budget)
    falls = np.zeros(batch, bool)
    for b in np.flatnonzero(by_evidence):
        covariance = np.cov(root.state_score[b], root.rewards[b], bias=True)
        wide = covariance[1, 1] - covariance[0, 1] >= 4 * covariance[0, 1]
        falls[b] = reference_tails_fall(root.state_score[b], root.rewards[b], expected_max, margin=1.5 if wide else 0.0)
    best_reward = root.state_index[np.arange(batch), np.argmax(np.nan_to_num(root.rewards, nan=-np.inf), axis=1)]
    by_evidence_pick = np.where(falls, best_reward, best_evidence_state(root, by_evidence))
    assert falls[by_evidence].sum() >= 5 and (best_reward != best_evidence_state(root, by_evidence))[falls].sum() >= 3
    for mine, expected, other in ((by_prefix, policy._best_prefix_state(root, by_prefix), best_evidence_state(root, by_prefix)),
                                  (by_evidence, by_evidence_pick, policy._best_prefix_state(root, by_evidence))):
        sharing = mine & (asked >= 0)
        assert sharing.sum() > 100
        assert (asked[sharing] == expected[sharing]).all()
        assert (expected[sharing] != other[sharing]).sum() >= 10  # the test can tell the picks apart


def paired_gain(method, other, world, budget, episodes=20_000, seed=0, config=None):
    from tests.core.test_policies import play_paired

    _, a = play_paired(method, budget, world, episodes, seed, config)
    _, b = play_paired(other, budget, world, episodes, seed)
    difference = a.best_reward - b.best_reward
    return difference.mean(), difference.std(ddof=1) / math.sqrt(difference.size)


@pytest.mark.parametrize("budget", [48, 64])
def test_states_narrower_than_the_prompt_no_longer_lose_to_best_of_n(budget):
    """gaussian sigma1 = 0.25 (held out of the design; slg_adaptive loses to best-of-N here): picking
    the state on prefix score and reward together, then sharing, gains. Paired, 20,000 episodes:
    +0.089 +- 0.003 at N = 48 and +0.118 +- 0.003 at 64 (one standard error); picking on the best
    prefix score alone gives -0.043 / -0.033, on the best reward alone +0.096 / +0.125 (narrow states
    make a reward a precise reading), slg_adaptive -0.040 / -0.030."""
    gain, stderr = paired_gain("slg_share", "bon", make_world("gaussian", sigma1=0.25), budget, seed=budget)
    assert gain > 0.04 and gain > 3 * stderr


def test_states_narrower_than_the_prompt_gain_where_slg_adaptive_screens_once():
    """gaussian sigma1 = 0.2 at N = 128, where slg_adaptive's plan screens four candidates in one
    halving and loses to best-of-N (-0.021 +- 0.003): the share rounds gain +0.138 +- 0.003 (paired,
    20,000 episodes, one standard error). A screening round costs a world of narrow states a quarter
    of N, and its one halving leaves too few rollouts to win them back."""
    gain, stderr = paired_gain("slg_share", "bon", make_world("gaussian", sigma1=0.2), 128, seed=128)
    assert gain > 0.08 and gain > 3 * stderr


def test_the_pick_needs_both_prefix_score_and_reward():
    """gaussian at N = 64, paired against slg_adaptive, 20,000 episodes: +0.065 +- 0.006 with the
    evidence pick; picking the best reward alone gives -0.047, the best prefix score alone -0.014."""
    gain, stderr = paired_gain("slg_share", "slg_adaptive", make_world("gaussian"), 64, seed=5)
    assert gain > 0.03, (gain, stderr)


def test_prefix_scores_of_noise_do_not_cost_what_slg_adaptive_gains():
    """gaussian with prefix_noise = 5 (prefix scores barely track rewards): the slope rule leaves the
    episodes to slg_adaptive. Paired against it, 20,000 episodes at N = 64: -0.003 +- 0.005 with the
    rule, -0.032 +- 0.006 without it (every episode to the share rounds, with a pick that is then
    mostly the best reward's). The bound sits between."""
    gain, stderr = paired_gain("slg_share", "slg_adaptive", make_world("gaussian", prefix_noise=5.0), 64, seed=4)
    assert gain > -0.017, (gain, stderr)


# --- narrow states at budgets with two halvings or more ------------------------------------------


def test_states_are_narrow_where_the_root_s_own_variance_estimate_is_small():
    """Reference: numpy's population (co)variances over each episode's known pairs; a state's own
    variance is Var(r) - Cov(s, r), narrow below ``narrow`` x Var(r), from 32 known pairs."""
    for reward_noise, batch_narrow in ((0.1, True), (1.0, False)):  # own variance 1% and 50% of Var(r)
        root = continuous_root(3, batch=200, width=200, reward_noise=reward_noise)
        rewards = root.rewards.copy()
        rewards[:, :5] = np.nan  # dropped scores: 195 known pairs
        root = Rollouts(rewards, root.can_branch, None, root.state_index, root.state_score)
        flagged = states_look_narrow(root, 0.1)
        for b in range(rewards.shape[0]):
            r, score = rewards[b, 5:], root.state_score[b, 5:]
            own = np.var(r) - np.cov(score, r, ddof=0)[0, 1]
            assert flagged[b] == (own < 0.1 * np.var(r))
        assert flagged.mean() > 0.7 if batch_narrow else flagged.mean() < 0.01  # the estimate's sd: about 0.1 of Var(r)
    few = continuous_root(3, batch=50, width=31, reward_noise=0.1)  # 31 pairs: too few to say
    enough = continuous_root(3, batch=50, width=32, reward_noise=0.1)
    assert not states_look_narrow(few, 0.1).any() and states_look_narrow(enough, 0.1).any()
    assert not states_look_narrow(continuous_root(3, batch=50, width=48, reward_noise=0.1), 0.0).any()  # 0: never


@pytest.mark.parametrize("sigma1, budget", [(0.15, 256), (0.2, 192)])
def test_narrow_states_share_where_slg_adaptive_would_screen_twice(sigma1, budget):
    """gaussian with states a sixth or a fifth as wide as the spread, at N = 256 / 192 (slg_adaptive's
    plan halves twice or more): episodes whose root says the states are narrow run the share rounds.
    Paired against best-of-N, 20,000 episodes: +0.083 +- 0.002 / +0.119 +- 0.003 (the second with the
    full share, which narrow states get up to ``share.commit_from``: +0.122 before it), where without
    the rule (``share.narrow_states = 0``: slg_adaptive's screening) -0.034 / +0.018 (one standard
    error)."""
    world = make_world("gaussian", sigma1=sigma1)
    gain, stderr = paired_gain("slg_share", "bon", world, budget, seed=budget)
    off = SearchConfig(share=ShareConfig(narrow_states=0.0))
    gain_off, stderr_off = paired_gain("slg_share", "bon", world, budget, seed=budget, config=off)
    assert gain > 0.05 and gain - gain_off > 0.08 and gain - gain_off > 10 * max(stderr, stderr_off)


def test_narrow_states_switched_off_leave_slg_adaptive_request_for_request():
    """``share.narrow_states = 0``: at N = 256 on states a tenth as wide as the spread, slg_share asks
    what slg_adaptive asks, request for request; with the default it does not."""
    world = make_world("gaussian", sigma1=0.1)
    _, adaptive, _ = requests_of(world, 256, batch=200, policy_class=AdaptiveSLG)
    off = SearchConfig(share=ShareConfig(narrow_states=0.0, evidence_candidates=False))  # slg_adaptive's candidates too
    for config, same in ((off, True), (None, False)):
        source = recording(WorldSource)(world, 200, np.random.default_rng(3), np.random.default_rng(4))
        play(SharedSLG, source, 256, config=config)
        equal = len(source.requests) == len(adaptive) and all(
            (node == node_a).all() and (count == count_a).all()
            for (node, count), (node_a, count_a) in zip(source.requests, adaptive))
        assert equal == same


@pytest.mark.parametrize("sigma1, budget, narrow_states, halves", [
    (0.1, 64, 0.1, (12, 24)),     # narrow, below 160: state_share (0.375 N) in halves of 12
    (0.1, 64, 0.0, (16, 32)),     # the rule off: the full share (N / 2)
    (1.0, 64, 0.1, (16, 32)),     # states as wide as the spread between them: the full share
    (0.1, 159, 0.1, (30, 60)),    # the last N whose plan halves once
    (0.1, 160, 0.1, (40, 80)),    # from 160 narrow states share as slg_adaptive's would screen: the full share
])
def test_below_160_narrow_continuous_states_keep_state_share(sigma1, budget, narrow_states, halves):
    """Continuous episodes picked by evidence, from N = 64 (``share.full_share_from``): where the
    topped-up root shows narrow states (``share.narrow_states``) below N = 160, the state gets
    ``state_share`` of the half the root leaves, and fresh prompt draws the rest; elsewhere all of it.
    A state's rollouts are its first half, or both halves where it kept the second. Prefix scores
    read the states closely (``prefix_noise = 0.3``), so the root's width estimate is sure enough at
    N = 64 (32 pairs) to test on."""
    world = make_world("gaussian", sigma1=sigma1, prefix_noise=0.3)
    source = recording(WorldSource)(world, 400, np.random.default_rng(budget), np.random.default_rng(budget + 1))
    _, ledger = play(SharedSLG, source, budget, SearchConfig(share=ShareConfig(narrow_states=narrow_states)))
    state = state_rollouts_of(source)
    shared = state > 0
    assert shared.mean() > 0.5
    assert np.isin(state[shared], halves).mean() > 0.9  # measured 0.95-1.0: a root's estimate errs now and then
    assert (ledger.spent == budget).all()


def test_below_160_few_levels_episodes_get_the_full_share_though_their_root_looks_narrow():
    """The narrow keep is for continuous episodes picked by evidence. On a grid of 20 levels with
    states a fifth as wide as the spread (discrete, sigma1 = 0.2), about half the roots of N / 2 = 48
    look narrow by the same estimate; in a batch beside narrow continuous episodes (gaussian sigma1 =
    0.1, which keep ``state_share``: 36, or its first half of 18), their state still gets all of the
    half the root leaves at N = 96: 48, or its first half of 24 where the rest goes back (as it mostly
    does here: a narrow state on a grid mostly repeats one level)."""
    grid = make_world("discrete", levels=20, sigma1=0.2)
    roots = WorldSource(grid, 200, np.random.default_rng(3), np.random.default_rng(4)).draw(
        Request.uniform(ROOT, 48, 200, score_prefixes=True))
    assert few_levels(roots).all() and states_look_narrow(roots, ShareConfig().narrow_states).mean() > 0.3  # the premise
    source = MixedWorlds(400, seed=96, worlds=(grid, make_world("gaussian", sigma1=0.1, prefix_noise=0.3)))
    _, ledger = play(SharedSLG, source, 96)
    state = sum(np.where(node >= 0, count, 0) for node, count in zip(source.requests, source.counts))
    assert (ledger.spent == 96).all()
    assert (state[:200] > 0).mean() > 0.9 and np.isin(state[:200], [0, 24, 48]).all()
    assert np.isin(state[200:], [18, 36]).mean() > 0.8  # the continuous half keeps its hedge


def test_narrow_states_keeping_state_share_below_160_pays():
    """gaussian sigma1 = 0.1 (states a tenth as wide as the spread) at N = 64, paired against
    ``share.narrow_states = 0`` (the full share there), 20,000 episodes: +0.0206 +- 0.0014 (one
    standard error). A root of 32 picks among narrow states on noisy readings; a wrong pick gets
    little past its mean, and the prompt draws after a state_share hedge it. (sigma1 = 0.2 at 96:
    +0.0099 +- 0.0014; the cost where states are half as wide as the spread, sigma1 = 0.5 at 128:
    -0.0051 +- 0.0022.)"""
    from tests.core.test_policies import play_paired

    world = make_world("gaussian", sigma1=0.1)
    _, kept = play_paired("slg_share", 64, world, 20_000, 64, SearchConfig())
    _, full = play_paired("slg_share", 64, world, 20_000, 64, SearchConfig(share=ShareConfig(narrow_states=0.0)))
    difference = kept.best_reward - full.best_reward
    assert difference.mean() > 0.01 and difference.mean() > 3 * difference.std(ddof=1) / math.sqrt(difference.size)


# --- the prompt check of a state's second half ---------------------------------------------------


def narrow_episode(first_half, seed=5, width=32, reward_noise=0.1):
    """A root of ``width`` distinct states a tenth as wide as the spread between them (Var(r) - Cov(s, r)
    about 1% of Var(r)), a first half of the share for one state, and the best reward so far."""
    root = continuous_root(seed, batch=1, width=width, score_noise=0.3, reward_noise=reward_noise)
    first = np.asarray(first_half, dtype=float)[None, :]
    best = np.nanmax(np.concatenate([root.rewards, first], axis=1), axis=1)
    return root, first, best


def prompt_beats_state(root, first, best, left=12, config=None):
    policy = SharedSLG(64, 1, config or SearchConfig())
    return policy._prompt_beats_state(root, root_moments(root), first, best, np.array([left]), np.array([True]))[0]


def test_the_prompt_check_gives_a_narrow_state_s_rest_to_the_prompt_and_keeps_a_wide_one():
    """On the prompt's quantile scale a state whose 8 first-half rewards sit within 0.01 of the root's
    median can reach the best so far (the root's best, about 2 sds up in a root of 32) in 12 more
    draws only if its sd were over a hundred times what they show, where 12 prompt draws pass it one
    time in four (1 - Phi(2)^12): the prompt beats it, even optimistically. A state whose first half spreads from the root's
    median to its best (sd about the prompt's) keeps its rest. Both cases are far from the margin."""
    root, _, _ = narrow_episode([0.0])
    median, top = np.median(root.rewards), root.rewards.max()
    narrow = median + 0.01 * np.linspace(-1, 1, 8)
    wide = np.linspace(median, top, 8)
    for first_half, beaten in ((narrow, True), (wide, False)):
        root, first, best = narrow_episode(first_half)
        assert prompt_beats_state(root, first, best) == beaten


def test_the_prompt_check_needs_a_first_fit_s_sample_but_not_for_a_far_narrower_first_half(monkeypatch):
    """7 first-half rewards (fewer than 2 ``adaptive.min_rollouts``) are too few for a tail fit: half as
    wide as the root's estimate of a state's own variance, they keep their rest, which 8 such rewards
    would not (the narrow root checks every first half of 8); far narrower than it (sd 0.01 against
    about 0.1), they are given back without a fit, unless the rule is off (``NARROW_FIRST_HALF`` = 0)."""
    root, _, _ = narrow_episode([0.0])
    _, _, _, _, var_reward, covariance = root_moments(root)
    z = np.linspace(-1, 1, 8)
    half_as_wide = np.median(root.rewards) + np.sqrt(0.5 * (var_reward[0] - covariance[0])) * z / z.std()
    far_narrower = np.median(root.rewards) + 0.01 * z
    assert not prompt_beats_state(*narrow_episode(np.delete(half_as_wide, 4)))
    assert prompt_beats_state(*narrow_episode(half_as_wide))
    assert prompt_beats_state(*narrow_episode(far_narrower[:7]))
    monkeypatch.setattr(share_module, "NARROW_FIRST_HALF", 0.0)
    assert not prompt_beats_state(*narrow_episode(far_narrower[:7]))


@pytest.mark.parametrize("count", [3, 4, 5, 6, 7])
def test_fewer_rewards_look_far_narrower_no_more_often_than_eight_do(count):
    """A state exactly as wide as the root's estimate: its first ``count`` rewards' variance (1/n) falls
    below ``few_rewards_threshold`` of that variance as often as 8 rewards' falls below 0.1 of it,
    P(chi-square(7) < 0.8) = 0.00256 (scipy's chi-square, independent of the threshold's inverse).
    Counted over 400,000 simulated first halves: 1022 expected, sd 32; the test allows 4 sds. A fixed
    0.1 would fire 2-54 times as often (0.0055 at 7, 0.139 at 3)."""
    rate = scipy.stats.chi2.cdf(0.8, 7)
    draws = np.random.default_rng(count).normal(0.0, 2.0, (400_000, count))
    fired = (draws.var(axis=1) < few_rewards_threshold(count, 0.1, 8) * 4.0).sum()
    expected = rate * draws.shape[0]
    assert abs(fired - expected) < 4 * math.sqrt(expected)
    assert few_rewards_threshold(8, 0.1, 8) == pytest.approx(0.1)


def test_a_far_narrower_first_half_needs_three_rewards_and_a_best_below_the_best_so_far():
    """Two equal rewards (variance 0) say nothing of a width; three do. A first half that holds the
    best so far is the prompt's top, never judged; from 8 rewards the threshold is ``narrow`` itself."""
    own, best = np.array([1.0]), np.array([2.0])
    assert not first_half_far_narrower(np.array([[0.5, 0.5]]), own, best, 0.1, 8)[0]
    assert first_half_far_narrower(np.array([[0.5, 0.5, 0.5]]), own, best, 0.1, 8)[0]
    assert not first_half_far_narrower(np.array([[0.5, 0.5, 0.5]]), own, np.array([0.5]), 0.1, 8)[0]
    eight = 0.5 + np.sqrt(0.09) * np.tile([-1.0, 1.0], 4)[None, :]  # variance 0.09: below 0.1, above 7's 0.076
    assert first_half_far_narrower(eight, own, best, 0.1, 8)[0]
    assert not first_half_far_narrower(eight[:, :6], own, best, 0.1, 8)[0]  # variance 0.09 at 6: above 0.052
    assert not first_half_far_narrower(np.where([[True] * 6 + [False] * 2], eight, np.nan), own, best, 0.1, 8)[0]
    assert not first_half_far_narrower(np.array([[0.5, 0.5, 0.5]]), np.array([0.0]), best, 0.1, 8)[0]  # no width to be below


def test_a_far_narrower_first_half_goes_back_only_in_its_own_episodes_and_unfitted_only_below_eight(monkeypatch):
    """Only the episodes ``mine`` are judged (another episode's share rounds run the check beside
    them); from 8 rewards a far narrower first half still goes through the tail fit, which here says
    the state wins, while 7 such rewards go back on their narrowness alone."""
    root, _, _ = narrow_episode([0.0])
    far_narrower = np.median(root.rewards) + 0.01 * np.linspace(-1, 1, 8)
    root, first, best = narrow_episode(far_narrower[:7])
    policy = SharedSLG(64, 1, SearchConfig())
    assert not policy._prompt_beats_state(root, root_moments(root), first, best, np.array([12]), np.array([False]))[0]
    monkeypatch.setattr(SharedSLG, "_final_best", lambda self, scores, alive, best_score, left: (
        None, np.full(alive.shape, np.inf), np.full(alive.shape, -np.inf)))  # the fit: the state beats the prompt
    assert prompt_beats_state(root, first, best)
    assert not prompt_beats_state(*narrow_episode(far_narrower))


def test_a_far_narrower_first_half_of_fewer_than_eight_rewards_pays_on_two_kinds_of_state(monkeypatch):
    """``two_kinds_bank_prompt`` at N = 32 and 40, whose first halves hold 6 and 7 rewards: a narrow
    high state's first half (sd about 0.2 against a root estimate of about 1) gives its second half
    to the prompt. 40 prompts x 200 episodes, paired on the same draws (one standard error): without it
    (``NARROW_FIRST_HALF`` = 0) -0.206 +- 0.013 against best-of-N at 32 and -0.203 +- 0.013 at 40, with
    it -0.138 and -0.099, gains of +0.068 +- 0.003 and +0.104 +- 0.004. Still below best-of-N: the
    first half is spent. The test asserts a gain of 10 standard errors at each."""
    for budget in (32, 40):
        with monkeypatch.context() as patch:  # each budget's variants from the module's own settings
            runs = two_kinds_runs(patch, budget, {"first half": (SharedSLG, {}),
                                                  "without": (SharedSLG, {"NARROW_FIRST_HALF": 0.0})})
        gain = runs["first half"] - runs["without"]
        assert gain.mean() > 10 * gain.std(ddof=1) / math.sqrt(gain.size)


@pytest.mark.parametrize("share_of_own_variance, checked", [(0.05, True), (0.09, True), (0.11, False), (0.5, False)])
def test_in_a_wide_root_the_prompt_check_judges_only_a_first_half_far_narrower_than_its_states(
        monkeypatch, share_of_own_variance, checked):
    """A root whose states look wider than the spread between them (reward noise 1.2 against a
    spread of 1, 200 states: Var(r) - Cov(s, r) = 1.45 > Cov(s, r) = 0.95) is checked only where the
    first half's variance (1/n) is below ``NARROW_FIRST_HALF`` (0.1) times the root's estimate of a
    state's own variance and its best is below the best so far. 8 rewards at the root's median with
    that share of the estimate: up to half of it the prompt beats them when checked (with the gate
    lifted), so only the gate keeps 0.11 and 0.5; with the best so far their own best, none is judged."""
    wide_root, _, _ = narrow_episode([0.0], reward_noise=1.2, width=200)
    _, _, _, _, var_reward, covariance = root_moments(wide_root)
    z = np.linspace(-1, 1, 8)
    first_half = np.median(wide_root.rewards) + np.sqrt(share_of_own_variance * (var_reward[0] - covariance[0])) * z / z.std()
    root, first, best = narrow_episode(first_half, reward_noise=1.2, width=200)
    assert prompt_beats_state(root, first, best) == checked
    # a first half that holds the best so far is the prompt's top: not judged, however narrow
    assert not prompt_beats_state(root, first, np.nanmax(first, axis=1))
    monkeypatch.setattr(share_module, "NARROW_FIRST_HALF", np.inf)
    assert prompt_beats_state(root, first, best)


def test_a_first_half_far_narrower_than_the_root_s_states_restores_level_on_two_kinds_of_state(monkeypatch):
    """``two_kinds_bank_prompt`` at N = 64: prefix score and reward pick a narrow high state, whose
    tail the width check (32 root rollouts) often misses; its first half of 16 rewards (sd about
    0.2, against a root estimate of about 1) lets the prompt check give the second half back.
    40 prompts x 200 episodes, paired on the same draws (one standard error): without it
    (``NARROW_FIRST_HALF`` = 0) -0.067 +- 0.013 against best-of-N, with it +0.003 +- 0.012, +0.070 +-
    0.003 over it. The test asserts below -4, above -2 and above 10 standard errors."""
    runs = two_kinds_runs(monkeypatch, 64, {"bon": (BestOfN, {}), "first half": (SharedSLG, {}),
                                            "without": (SharedSLG, {"NARROW_FIRST_HALF": 0.0})})
    assert_restores_level(runs, "first half", "without", below=4)


@pytest.mark.parametrize("budget", [96, 128])
def test_the_prompt_check_pays_where_states_are_a_tenth_as_wide_as_the_spread(budget):
    """gaussian sigma1 = 0.1 at N = 96 and 128, paired, 20,000 episodes: the check gains +0.0276 +-
    0.0012 / +0.0274 +- 0.0011 (one standard error) over ``share.prompt_check = false``, which is below
    best-of-N (-0.032 +- 0.003 / -0.015 +- 0.003); with the check -0.004 +- 0.002 / +0.012 +- 0.002. On
    gaussian (states as wide as the spread) it costs -0.0010 +- 0.0006 at N = 64 (of +0.48 over
    best-of-N)."""
    world = make_world("gaussian", sigma1=0.1)
    off = SearchConfig(share=ShareConfig(prompt_check=False))
    from tests.core.test_policies import play_paired
    _, on = play_paired("slg_share", budget, world, 20_000, budget)
    _, without = play_paired("slg_share", budget, world, 20_000, budget, off)
    gain = on.best_reward - without.best_reward
    assert gain.mean() > 0.01 and gain.mean() > 8 * gain.std(ddof=1) / math.sqrt(gain.size)
    _, on = play_paired("slg_share", 64, make_world("gaussian"), 20_000, 64)
    _, without = play_paired("slg_share", 64, make_world("gaussian"), 20_000, 64, off)
    assert (on.best_reward - without.best_reward).mean() > -0.01


def test_the_prompt_check_still_judges_where_a_score_was_dropped():
    """A dropped score (NaN) among the prompt's draws is left out of the best so far, not taken as it:
    on gaussian sigma1 = 0.1 at N = 96 (2000 episodes, one root score dropped in each) the check still
    gives about half the states' second halves back (48.8% kept, against 48.3% with no drop and 99.4%
    with the check off); a NaN best would switch it off in every episode."""
    class DropsOne(WorldSource):
        def draw(self, request):
            rollouts = super().draw(request)
            if (request.node == ROOT).any():
                rollouts.rewards[:, 0] = np.nan
            return rollouts

    kept = {}
    for prompt_check in (True, False):
        source = DropsOne(make_world("gaussian", sigma1=0.1), 2000, np.random.default_rng(1), np.random.default_rng(2))
        policy, ledger = play(SharedSLG, source, 96, SearchConfig(share=ShareConfig(prompt_check=prompt_check)), seed=3)
        kept[prompt_check] = (policy.selected != ROOT).mean()
        assert (ledger.spent == 96).all()
    assert kept[True] < 0.6 and kept[False] > 0.95
