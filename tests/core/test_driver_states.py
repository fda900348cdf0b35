"""What the driver tells a policy about states: root rollouts with the same prefix are one state (by
token ids), and a policy that asks gets the reward model's score of each new prefix, scored once."""

import numpy as np
import pytest
from conftest import nan_every

from actors.sim import SimGenerator, SimRewardModel
from pipeline.distributed.calls import LocalCalls
from pipeline.distributed.config import DriverConfig
from pipeline.distributed.contract import PromptInput, ScoreRequest, StatePrefix
from pipeline.distributed.driver import Driver, derive_seed, rollout_seed
from pipeline.distributed.search_record import SearchSpec
from pipeline.search.base import SearchPolicy
from pipeline.search.bon import BestOfN
from pipeline.search.config import SearchConfig
from pipeline.search.protocol import ROOT, Request


class TwoRootRounds(SearchPolicy):
    """Asks the prompt twice and keeps what it is told; asks for prefix scores in the rounds ``asks``."""

    name = "two_root_rounds"
    asks = (True, True)
    told: list = []

    def _search(self):
        first = yield [Request.uniform(ROOT, self.budget // 2, 1, score_prefixes=self.asks[0])]
        second = yield [Request.uniform(ROOT, self.budget - self.budget // 2, 1, score_prefixes=self.asks[1])]
        type(self).told.append((first[0], second[0]))


class ScoredThenNot(TwoRootRounds):
    """Only the first of the two root rounds asks for prefix scores."""

    name = "scored_then_not"
    asks = (True, False)
    told: list = []


class FewPrefixes(SimGenerator):
    """Root rollouts cut one of ``kinds`` prefixes (by seed), so several share a state; None: each
    its own."""

    def __init__(self, kinds: int | None = 3):
        super().__init__()
        self.kinds = kinds

    def generate(self, requests):
        rollouts = super().generate(requests)
        for request, rollout in zip(requests, rollouts):
            if rollout.state is not None:
                k = request.seed if self.kinds is None else request.seed % self.kinds
                rollout.state = StatePrefix(token_ids=(1000 + k,), text=f"<state {1000 + k}>")
        return rollouts


class CountingRewardModel(SimRewardModel):
    """Keeps every text it is asked to score (responses and prefixes) and the number of items sent."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.texts, self.items = [], 0

    def score(self, requests):
        self.texts += [r.response_text for r in requests] + [r.prefix_text for r in requests if r.prefix_text is not None]
        self.items += len(requests)
        return super().score(requests)


class LastFirstCalls(LocalCalls):
    """Finished calls come back last submitted first: a round's later rollouts arrive before its earlier ones."""

    def wait(self, tokens, timeout_s):
        return super().wait(tokens, timeout_s)[::-1]


def run(generator, budget=24, calls=None, policy=TwoRootRounds):
    """(what the policy was told in its two rounds, the reward model, the search's row)."""
    policy.told = []
    reward = CountingRewardModel()
    spec = SearchSpec(PromptInput("p", "a prompt"), policy.name, budget, policy, SearchConfig())
    driver = Driver([spec], [generator], [reward], DriverConfig(max_batch_rollouts=5), 0, calls or LocalCalls())
    finished, progress = driver.step(None)
    assert progress["done"]
    return policy.told[0], reward, finished[0]


def prefix_of_root_rollout(k: int) -> int:
    """FewPrefixes' prefix of root rollout k, from the seed the driver gives it."""
    return 1000 + rollout_seed(0, "p", "root", k) % 3


class NeverAsks(TwoRootRounds):
    """Two root rounds, neither asking for prefix scores."""

    name = "never_asks"
    asks = (False, False)
    told: list = []


@pytest.mark.parametrize("policy", [TwoRootRounds, NeverAsks])
@pytest.mark.parametrize("calls", [LocalCalls, LastFirstCalls])
def test_root_rollouts_with_one_prefix_are_one_state_whatever_the_round_and_arrival(calls, policy):
    (first, second), _, _ = run(FewPrefixes(), calls=calls(), policy=policy)
    index = np.concatenate([first.state_index[0], second.state_index[0]])
    prefix = [prefix_of_root_rollout(k) for k in range(len(index))]
    for k in range(len(index)):
        assert index[k] == min(j for j in range(len(index)) if prefix[j] == prefix[k])


def test_each_new_prefix_is_scored_once_by_the_reward_model_and_told_to_the_policy():
    (first, second), reward, row = run(FewPrefixes())
    prefixes = [t for t in reward.texts if " <sim rollout" not in t]
    assert sorted(prefixes) == sorted(set(prefixes)) and len(prefixes) == 3  # three prefixes, each scored once
    assert reward.items == 24 == row["rollouts"]  # each rides with the rollout that revealed it: no item of its own
    scores = np.concatenate([first.state_score[0], second.state_score[0]])
    expected = {p: SimRewardModel().score([ScoreRequest(0, PromptInput("p", "a prompt"), p)])[0].reward for p in prefixes}
    for k, score in enumerate(scores):
        assert score == expected[f"<state {prefix_of_root_rollout(k)}>"]


NaNEveryThirdResponse = nan_every(3, CountingRewardModel)  # prefixes score as the sim does


def test_a_dropped_reward_keeps_its_prefix_score_and_every_text_read_counts_its_tokens():
    TwoRootRounds.told = []
    reward = NaNEveryThirdResponse()
    spec = SearchSpec(PromptInput("p", "a prompt"), TwoRootRounds.name, 24, TwoRootRounds, SearchConfig())
    driver = Driver([spec], [FewPrefixes(kinds=None)], [reward], DriverConfig(max_batch_rollouts=5), 0, LocalCalls(),
                    drop_nonfinite=True)
    (row,), progress = driver.step(None)
    (first, second), = TwoRootRounds.told
    rewards = np.concatenate([first.rewards[0], second.rewards[0]])
    assert np.isnan(rewards).sum() == 8 and row["dropped_scores"] == 8
    assert np.isfinite(np.concatenate([first.state_score[0], second.state_score[0]])).all()  # 24 states, 24 scores
    tokens = [SimRewardModel().score([ScoreRequest(0, PromptInput("p", "a prompt"), t)])[0].num_tokens for t in reward.texts]
    assert len(reward.texts) == 48 and progress["rm_tokens"] == sum(tokens) and progress["prefixes_scored"] == 24


class IgnoresPrefixes(SimRewardModel):
    """A reward model whose ``score`` reads responses only (no ``contract.scores_prefixes``)."""

    def score(self, requests):
        return [SimRewardModel._one(self, r) for r in requests]


def test_a_reward_model_that_leaves_a_prefix_unscored_stops_the_run_saying_so():
    spec = SearchSpec(PromptInput("p", "a prompt"), "two_root_rounds", 24, TwoRootRounds, SearchConfig())
    driver = Driver([spec], [FewPrefixes()], [IgnoresPrefixes()], DriverConfig(), 0, LocalCalls())
    with pytest.raises(RuntimeError, match="left the prefix of request .* unscored"):
        driver.step(None)


def test_only_a_request_that_asks_gets_its_prefixes_scored():
    """A prefix score is one more reward-model read: a request that does not ask (``score_prefixes``)
    gets none, though its root rollouts reveal new states, and is told no scores; the row's
    correlation is over the rollouts that asked."""
    (first, second), reward, row = run(FewPrefixes(kinds=None), policy=ScoredThenNot)
    prefixes = [t for t in reward.texts if " <sim rollout" not in t]
    assert sorted(prefixes) == sorted(f"<state {1000 + rollout_seed(0, 'p', 'root', k)}>" for k in range(12))
    assert np.isfinite(first.state_score).all() and second.state_score is None
    assert (second.state_index[0] == np.arange(12, 24)).all()  # new states all the same
    assert row["prefix_correlation"] == pytest.approx(np.corrcoef(first.state_score[0], first.rewards[0])[0, 1], abs=1e-12)


def test_a_sim_prefix_score_reads_its_states_quality():
    """The simulated reward model's reading of a prefix is the world's state latent plus noise of sd
    prefix_noise (1 by default): correlated with the state's mean reward, far from equal to it."""
    from actors.sim import _SimWorld

    sim = _SimWorld("gaussian", {})
    latents = np.array([sim.state_latent(seed) for seed in range(4000)])
    readings = np.array([sim.prefix_score(seed) for seed in range(4000)])
    # latent ~ N(0, 1), reading = latent + N(0, 1): correlation 1/sqrt(2) = 0.707; sd of the estimate over
    # 4000 pairs is about 0.008
    assert abs(np.corrcoef(latents, readings)[0, 1] - 2 ** -0.5) < 0.03
    assert abs(np.std(readings - latents) - 1.0) < 0.03


class RootThenState(SearchPolicy):
    """A root round, then a round from the state of root rollout 0; asks for prefix scores."""

    name = "root_then_state"
    told: list = []

    def _search(self):
        (root,) = yield [Request.uniform(ROOT, self.budget // 2, 1, score_prefixes=True)]
        (state,) = yield [Request.uniform(0, self.budget - self.budget // 2, 1)]
        RootThenState.told.append((root, state))


class RootThenStateAsking(RootThenState):
    """As RootThenState, and the state's round asks for prefix scores too."""

    name = "root_then_state_asking"
    told: list = []

    def _search(self):
        (root,) = yield [Request.uniform(ROOT, self.budget // 2, 1, score_prefixes=True)]
        (state,) = yield [Request.uniform(0, self.budget - self.budget // 2, 1, score_prefixes=True)]
        RootThenStateAsking.told.append((root, state))


def test_rollouts_from_a_state_reveal_no_state_and_have_no_prefix_score_even_where_asked():
    rows = run_rows(RootThenStateAsking, 40)
    (root, state), = RootThenStateAsking.told
    assert state.state_score.shape == (1, 20) and np.isnan(state.state_score).all()
    assert (state.state_index == -1).all() and not state.can_branch.any()
    expected = np.corrcoef(root.state_score[0], root.rewards[0])[0, 1]  # the state's rollouts are no pairs
    assert rows[RootThenStateAsking.name]["prefix_correlation"] == pytest.approx(expected, abs=1e-12)


def run_rows(policy_class, budget):
    policy_class.told = []
    specs = [SearchSpec(PromptInput("p", "a prompt"), policy_class.name, budget, policy_class, SearchConfig()),
             SearchSpec(PromptInput("p", "a prompt"), "bon", budget, BestOfN, SearchConfig())]
    driver = Driver(specs, [FewPrefixes()], [SimRewardModel()], DriverConfig(max_batch_rollouts=5), 0, LocalCalls())
    finished, progress = driver.step(None)
    assert progress["done"]
    return {row["method"]: row for row in finished}


def test_a_searchs_row_reports_the_correlation_of_its_root_rollouts_prefix_scores_and_rewards():
    """Over both root rounds, each root rollout's state prefix score against its reward; none for a
    policy that scores no prefixes (best-of-N)."""
    rows = run_rows(TwoRootRounds, 40)
    (first, second), = TwoRootRounds.told
    scores = np.concatenate([first.state_score[0], second.state_score[0]])
    rewards = np.concatenate([first.rewards[0], second.rewards[0]])
    assert np.isfinite(scores).all() and len(set(scores)) == 3
    assert rows[TwoRootRounds.name]["prefix_correlation"] == pytest.approx(np.corrcoef(scores, rewards)[0, 1], abs=1e-12)
    assert rows["bon"]["prefix_correlation"] is None


def test_the_correlation_leaves_out_rollouts_from_states_and_is_null_where_undefined():
    """A state's rollouts are not prompt draws: only the root round's pairs count. With fewer than 3
    root rollouts there is no correlation: null in results.jsonl, not NaN."""
    rows = run_rows(RootThenState, 40)
    (root, state), = RootThenState.told
    assert state.rewards.shape[1] == 20 and np.isfinite(state.rewards).all()
    expected = np.corrcoef(root.state_score[0], root.rewards[0])[0, 1]
    assert rows[RootThenState.name]["prefix_correlation"] == pytest.approx(expected, abs=1e-12)
    assert run_rows(RootThenState, 4)[RootThenState.name]["prefix_correlation"] is None  # 2 root rollouts


class DrawsFirst(BestOfN):
    """Best-of-N that first draws one number from its rng (as state_selection=random draws)."""

    name = "draws_first"
    draws: dict = {}

    def _search(self):
        DrawsFirst.draws[self.budget] = DrawsFirst.draws.get(self.budget, []) + [self.rng.random()]
        yield from super()._search()


def test_each_search_draws_from_its_own_seed_the_same_in_every_run():
    """A policy's rng is seeded by (run seed, prompt, method, budget): searches differ, runs repeat."""
    runs = []
    for _ in range(2):
        DrawsFirst.draws = {}
        specs = [SearchSpec(PromptInput(p, "a prompt"), DrawsFirst.name, n, DrawsFirst, SearchConfig())
                 for p in ("p1", "p2") for n in (4, 8)]
        Driver(specs, [SimGenerator()], [SimRewardModel()], DriverConfig(), 0, LocalCalls()).step(None)
        runs.append(DrawsFirst.draws)
    assert runs[0] == runs[1]
    draws = runs[0][4] + runs[0][8]
    assert len(set(draws)) == 4
    assert runs[0][8][1] == np.random.default_rng(derive_seed(0, "p2", DrawsFirst.name, 8)).random()
