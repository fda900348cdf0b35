"""The driver in-process on simulated engines: what it reports is what its rollouts say.

Every reported number (best reward, RM@1, pass@N, majority vote, states sampled, the oracle's pick) is
recomputed here from the rollouts the driver scored, recorded by an observer, never from the
driver's own bookkeeping. No Ray: the driver calls the engines directly.
"""

import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, fields

import numpy as np
import pytest

from actors.sim import SimGenerator, SimGroundTruth, SimRewardModel
from pipeline.distributed.calls import LocalCalls
from pipeline.distributed.config import DriverConfig
from pipeline.distributed.contract import PromptInput
from pipeline.distributed.driver import Driver, SearchObserver
from pipeline.distributed.search_record import Ledger, SearchSpec
from pipeline.jobs.searches import search_grid
from pipeline.search.config import SearchConfig
from pipeline.search.protocol import ROOT
from pipeline.search.share import SharedSLG
from pipeline.stats.schedule import default_schedule

PROMPTS = [PromptInput(f"p{i}", f"prompt {i}") for i in range(8)]


@dataclass
class Scored:
    node: int
    sequence: int
    reward: float
    answer: str | None
    correct: bool | None


class RolloutLog(SearchObserver):
    """Every scored rollout of every search, as the engines returned it."""

    def __init__(self):
        self.scored = defaultdict(list)

    def rollout_scored(self, search, slot, position, rollout, reward, sequence):
        key = (search.prompt.prompt_id, search.method, search.budget)
        self.scored[key].append(Scored(slot.node, sequence, reward, rollout.answer, rollout.correct))


class FourAnswers(SimGenerator):
    """Graded rollouts with a handful of answers ("0" is right), so votes and pass@N vary by prompt."""

    def generate(self, requests):
        rollouts = super().generate(requests)
        for request, rollout in zip(requests, rollouts):
            rng = np.random.default_rng([request.seed, 7])
            rollout.answer = str(int(rng.choice(4, p=[0.1, 0.3, 0.3, 0.3])))
            rollout.correct = rollout.answer == "0"
        return rollouts


def play(methods, budgets, generator=None, family="gaussian", prompts=PROMPTS, config=None):
    log = RolloutLog()
    searches = search_grid(prompts, list(methods), list(budgets), config or SearchConfig())
    driver = Driver(searches, [generator or SimGenerator(family=family)], [SimRewardModel(family=family)],
                    DriverConfig(max_batch_rollouts=7), 0, ground_truth=SimGroundTruth(family), observer=log,
                    calls=LocalCalls())
    rows, progress = driver.step(None)
    assert progress["done"]
    return {(r["prompt_id"], r["method"], r["budget"]): r for r in rows}, log.scored


def test_answer_pass_at_n_and_majority_vote_are_those_of_the_scored_rollouts():
    rows, scored = play(["bon", "slg", "slg_adaptive"], [8, 64], generator=FourAnswers())
    for key, row in rows.items():
        rollouts = sorted(scored[key], key=lambda s: s.sequence)
        assert len(rollouts) == row["rollouts"] == key[2]
        best = max(rollouts, key=lambda s: (s.reward, -s.sequence))  # ties: the rollout planned first
        assert (row["best_reward"], row["correct"]) == (best.reward, best.correct)  # RM@1
        assert row["pass_at_n"] == any(s.correct for s in rollouts)
        votes = Counter(s.answer for s in rollouts)
        first_seen = {}
        for s in rollouts:
            first_seen.setdefault(s.answer, s.sequence)
        winner = max(votes, key=lambda answer: (votes[answer], -first_seen[answer]))
        assert row["majority_answer"] == winner
        assert row["majority_correct"] == (winner == "0")
    # the check means something only if the outcomes vary
    assert {r["pass_at_n"] for r in rows.values()} == {True, False}
    assert {r["majority_correct"] for r in rows.values()} == {True, False}
    assert any(r["majority_answer"] != min(scored[k], key=lambda s: s.sequence).answer for k, r in rows.items())


def test_every_method_shares_the_prompts_root_rollouts():
    """Root rollout k of a prompt is the same rollout for every method and budget (common random numbers)."""
    rows, scored = play(["bon", "slg", "slg_adaptive"], [64, 256])
    for prompt in PROMPTS:
        bon = [s.reward for s in sorted(scored[(prompt.prompt_id, "bon", 256)], key=lambda s: s.sequence)]
        for method in ("slg", "slg_adaptive"):
            for budget in (64, 256):
                roots = [s.reward for s in sorted(scored[(prompt.prompt_id, method, budget)], key=lambda s: s.sequence)
                         if s.node == ROOT]
                assert len(roots) >= 16 and roots == bon[: len(roots)]


def test_states_sampled_are_counted():
    rows, scored = play(["bon", "slg"], [100])
    m, num_states = default_schedule(100)
    for key, row in rows.items():
        sampled = {s.node for s in scored[key] if s.node != ROOT}
        assert row["num_states"] == len(sampled)
        assert row["num_states"] == (0 if key[1] == "bon" else num_states)  # every root rollout is long enough here


def test_short_rollouts_never_become_states():
    rows, scored = play(["slg"], [100], generator=SimGenerator(short_rollout_fraction=0.9))
    assert all(r["rollouts"] == 100 for r in rows.values())
    assert any(r["num_states"] < default_schedule(100)[1] for r in rows.values())  # 90% of roots cannot branch


def test_oracle_selects_by_the_true_value_of_each_node():
    rows, _ = play(["oracle"], [256])
    truth = SimGroundTruth("gaussian")
    prompt_value = float(truth.values([None], 256)[0])
    picks = [r["selected"] for r in rows.values()]
    # At N = 256 the best of K top-reward states beats the prompt's own best-of-N in most prompts
    # (state mean ~ N(0, 1): the top of 35 roots has V_256 near 1.5 + 2.8 against 3.96 for the prompt).
    assert sum(pick != "root" for pick in picks) >= len(picks) // 2
    for row in rows.values():
        # the value the oracle reports is the true V_N of its pick, and no candidate is truly better than the prompt
        # when it picks the root: so its pick is worth at least the prompt's value
        assert row["predicted_value"] >= prompt_value - 1e-12
        if row["selected"] == "root":
            assert row["predicted_value"] == pytest.approx(prompt_value)


def test_rollout_seed_is_derive_seed_of_the_same_parts():
    """The driver's cached-prefix seed must equal the plain derivation (results would change otherwise)."""
    from pipeline.distributed.driver import derive_seed, rollout_seed

    for seed, prompt_id, node, index in [(0, "p0", "root", 0), (7, "gsm8k/12", "s3", 41), (2**40, "", "s17", 4999)]:
        assert rollout_seed(seed, prompt_id, node, index) == derive_seed(seed, prompt_id, node, index)


class Admissions(SearchObserver):
    """The order in which searches were admitted (their first request) and finished."""

    def __init__(self):
        self.events, self.seen = [], set()

    def rollout_requested(self, search, request):
        if search.order not in self.seen:
            self.seen.add(search.order)
            self.events.append(("admitted", search.order))

    def search_finished(self, search, row):
        self.events.append(("finished", search.order))


@pytest.mark.parametrize("window", [None, 3])
def test_an_in_order_window_keeps_admissions_within_that_many_places_of_the_oldest_running_search(window):
    searches = search_grid(PROMPTS, ["bon"], [256, 8], SearchConfig())  # a long search, then a short one, per prompt
    log = Admissions()
    driver = Driver(searches, [SimGenerator()], [SimRewardModel()], DriverConfig(max_concurrent_prompts=6, max_batch_rollouts=7),
                    0, observer=log, calls=LocalCalls(), in_order_window=window)
    rows, progress = driver.step(None)
    assert progress["done"] and len(rows) == len(searches)
    finished, spread = set(), 0
    for event, order in log.events:
        if event == "finished":
            finished.add(order)
        else:  # places between this search and the oldest one not finished
            spread = max(spread, order - min(set(range(order)) - finished, default=order))
    if window is None:
        assert spread > 2  # six in flight: the window below is what holds them closer
    else:
        assert spread <= window - 1


def test_collect_asks_a_state_s_completions_in_rounds_and_gets_the_same_rewards():
    from conftest import run_in_process

    from pipeline.jobs.collection import SampleRecorder

    sizes = ["collect.num_states=4", "collect.completions_per_state=9", "data.num_prompts=3", "generator.sim.family=bimodal"]
    class RoundSizes(SampleRecorder):
        def __init__(self):
            super().__init__(False)
            self.sizes = []

        def round_scored(self, search):
            self.sizes.append(sum(slot.count for slot in search.slots))
            super().round_scored(search)

    whole = run_in_process(sizes, SampleRecorder(False), collect=True)
    recorder = RoundSizes()
    rounds = run_in_process([*sizes, "collect.rollouts_per_round=8"], recorder, collect=True)  # 2 a state a round
    assert [r["rollouts"] for r in rounds] == [4 * 10] * 3
    assert sorted(set(recorder.sizes)) == [4, 8]  # the root round; then 8, 8, 8, 8 and a last 4 (9 = 2+2+2+2+1)
    for one, other in zip(whole, rounds):
        assert set(one["samples"]) == set(other["samples"]) == {"root", "s0", "s1", "s2", "s3"}
        for name, samples in one["samples"].items():
            assert samples.rewards.tolist() == other["samples"][name].rewards.tolist()
            assert samples.correct.tolist() == other["samples"][name].correct.tolist()


def test_collect_holds_fewer_prompts_in_flight_when_each_holds_many_rewards():
    from pipeline.jobs.collection import IN_FLIGHT_REWARDS, prompts_in_flight
    from pipeline.jobs.config import load_run_config

    def in_flight(*overrides):
        return prompts_in_flight(load_run_config(None, list(overrides)))

    assert in_flight() == 64  # 16 x 64 rewards a prompt: driver.max_concurrent_prompts decides
    assert in_flight("collect.num_states=64", "collect.completions_per_state=10000") == IN_FLIGHT_REWARDS // 640_000 == 6
    assert in_flight("collect.num_states=64", "collect.completions_per_state=100000") == 2  # never fewer than two
    assert in_flight("driver.max_concurrent_prompts=4") == 4


@pytest.mark.parametrize("override, match", [
    ("driver.call_timeout_s=-1", "driver.call_timeout_s must be a finite number of seconds >= 0, got -1.0"),
    ("driver.step_s=0", "driver.step_s must be a finite number of seconds > 0, got 0.0"),
    ("driver.replica_retry_s=nan", "driver.replica_retry_s must be a finite number of seconds >= 0, got nan"),
    ("driver.replica_recovery_timeout_s=-5", "driver.replica_recovery_timeout_s must be a finite number of seconds > 0"),
    ("driver.progress_interval_s=.inf", "driver.progress_interval_s must be a finite number of seconds >= 0, got inf"),
    ("generator.sim.latency_per_token_s=.inf", "generator.sim.latency_per_token_s must be a finite number of seconds"),
    ("generator.sim.rm_latency_per_item_s=-1", "generator.sim.rm_latency_per_item_s must be a finite number of seconds"),
    ("storage.checkpoint_interval_s=nan", "storage.checkpoint_interval_s must be a finite number of seconds >= 0, got nan"),
])
def test_a_duration_in_the_config_is_a_finite_number_of_seconds(override, match):
    """Refused when the config is read, before any actor starts: a negative, NaN or infinite one
    reached Ray's wait (call_timeout_s=-1), a sleep (inf) or a clock comparison mid-run."""
    from pipeline.errors import ConfigError
    from pipeline.jobs.config import load_run_config

    with pytest.raises(ConfigError, match=re.escape(match)):
        load_run_config(None, [override])
    load_run_config(None, [override.split("=")[0] + "=0.5"])  # a finite one is taken
class SeedLog(SearchObserver):
    """The seed of every rollout requested and the node each came from, per search."""

    def __init__(self):
        self.requested = {}
        self.node_of = {}

    def rollout_requested(self, search, request):
        self.requested[request.request_id] = ((search.prompt.prompt_id, search.method, search.budget), request.seed)

    def rollout_scored(self, search, slot, position, rollout, reward, sequence):
        self.node_of[rollout.request_id] = slot.node


def test_the_rollouts_of_a_node_have_the_seeds_of_their_index_within_the_node():
    """Rollout i of node K (the prompt: "root", state K: "sK") has seed derive_seed(run seed, prompt
    id, node, i), i = 0..count-1 over the whole search (slg_adaptive asks a state in several rounds):
    a state's rollouts are different draws, and the same ones whichever replica or round serves them."""
    from pipeline.distributed.driver import derive_seed

    log = SeedLog()
    searches = search_grid(PROMPTS[:3], ["slg", "slg_adaptive"], [64, 256], SearchConfig())
    driver = Driver(searches, [SimGenerator(), SimGenerator()], [SimRewardModel()], DriverConfig(max_batch_rollouts=5),
                    11, ground_truth=SimGroundTruth("gaussian"), observer=log, calls=LocalCalls())
    driver.step(None)
    seeds = defaultdict(list)
    for request_id, (key, seed) in log.requested.items():
        seeds[key, log.node_of[request_id]].append(seed)
    states_seen = 0
    for ((prompt_id, _, _), node), got in seeds.items():
        name = "root" if node == ROOT else f"s{node}"
        assert len(set(got)) == len(got)
        assert sorted(got) == sorted(derive_seed(11, prompt_id, name, i) for i in range(len(got)))
        states_seen += node != ROOT and len(got) > 1
    assert states_seen >= 20  # the check is about states with several rollouts: there are many


class LevelRewards(SimRewardModel):
    """The sim reward rounded down to a whole number: a handful of levels, so the best is tied."""

    def score(self, requests):
        scores = super().score(requests)
        for score in scores:
            score.reward = float(np.floor(score.reward))
        return scores


def test_a_tied_best_reward_reports_the_rollout_planned_first():
    """Among rollouts of equal best reward, the answer (and its correctness) is that of the rollout
    planned first, whatever order the rewards arrive in: two generator replicas, each sent every
    other request, answer out of plan order."""
    log = RolloutLog()
    searches = search_grid(PROMPTS, ["bon", "slg"], [32, 64], SearchConfig())
    driver = Driver(searches, [FourAnswers(), FourAnswers()], [LevelRewards()], DriverConfig(max_batch_rollouts=4), 0,
                    ground_truth=SimGroundTruth("gaussian"), observer=log, calls=LocalCalls())
    rows, progress = driver.step(None)
    assert progress["done"]
    disagree = 0
    for row in rows:
        scored = log.scored[(row["prompt_id"], row["method"], row["budget"])]
        top = max(s.reward for s in scored)
        tied = sorted((s for s in scored if s.reward == top), key=lambda s: s.sequence)
        first = tied[0]
        assert (row["best_reward"], row["correct"]) == (first.reward, first.correct)
        assert row["best_node"] == ("root" if first.node == ROOT else f"s{first.node}")
        disagree += len({s.correct for s in tied}) == 2
    assert disagree >= 5  # ties whose rollouts differ in correctness: the rule decides the reported accuracy


def test_ledgers_add_up_field_by_field():
    """The run's totals (``Driver.progress``) are ledgers added up: every counter must carry over."""
    names = [field.name for field in fields(Ledger)]
    first = Ledger(**{name: 1 + index for index, name in enumerate(names)})
    second = Ledger(**{name: 100 * (1 + index) for index, name in enumerate(names)})
    total = first + second
    assert {name: getattr(total, name) for name in names} == {name: 101 * (1 + index) for index, name in enumerate(names)}



def _burn(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


# Far above what the driver spends around a call or a round (tens of microseconds), and above a
# first call's lazy imports too (at 0.01 the calls' part once passed it, on a loaded machine).
BURN_S = 0.05


class SlowPolicy(SharedSLG):
    """``slg_share`` that spends BURN_S of CPU on each round's results it observes."""

    observed = 0

    def observe(self, results):
        SlowPolicy.observed += 1
        _burn(BURN_S)
        super().observe(results)


class SlowGenerator(SimGenerator):
    """A generator that spends BURN_S of CPU on each call (called in-process: on the driver's thread)."""

    calls = 0

    def generate(self, requests):
        SlowGenerator.calls += 1
        _burn(BURN_S)
        return super().generate(requests)


@pytest.mark.parametrize("slow", ["policy", "calls"])
def test_the_driver_s_time_is_split_between_its_policies_its_replica_calls_and_the_rest(slow):
    """``slg bench``'s breakdown: CPU spent in a policy counts as the policy's, CPU spent inside a
    replica call as the calls', and neither part holds the other's."""
    SlowPolicy.observed = SlowGenerator.calls = 0
    policy = SlowPolicy if slow == "policy" else SharedSLG
    searches = [SearchSpec(prompt, "slg_share", 16, policy, SearchConfig()) for prompt in PROMPTS[:3]]
    generator = SlowGenerator() if slow == "calls" else SimGenerator()
    # a policy a search (policy_batch=1): each of the three observes its own rounds
    driver = Driver(searches, [generator], [SimRewardModel()], DriverConfig(max_batch_rollouts=7, policy_batch=1), 0,
                    calls=LocalCalls())
    _, progress = driver.step(None)
    assert progress["done"]
    policy_s, calls_s = progress["driver_policy_cpu_s"], progress["driver_calls_cpu_s"]
    if slow == "policy":
        assert SlowPolicy.observed >= 3  # every search observes its root at least
        assert policy_s >= SlowPolicy.observed * BURN_S
        assert calls_s < BURN_S
    else:
        assert SlowGenerator.calls >= 3
        assert calls_s >= SlowGenerator.calls * BURN_S
        assert policy_s < BURN_S
    assert policy_s + calls_s <= progress["driver_cpu_s"]
