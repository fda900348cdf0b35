"""Searches that share a policy (``driver.policy_batch``): a search draws the same rollouts and
reports the same row in a group as alone, groups hold one method, budget and config, and the
results a group's policy reads are its members' own, row by row. No Ray: the driver calls the
engines directly."""

import hashlib
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest

from actors.sim import SimGenerator, SimGroundTruth, SimRewardModel
from pipeline.distributed.calls import LocalCalls
from pipeline.distributed.config import DriverConfig
from pipeline.distributed.contract import PromptInput
from pipeline.distributed.driver import Driver, SearchObserver
from pipeline.distributed.policy_groups import batches, stacked
from pipeline.jobs.searches import search_grid
from pipeline.search.config import SearchConfig, StateSelection
from pipeline.search.methods import METHODS
from pipeline.search.protocol import Rollouts

PROMPTS = [PromptInput(f"p{i}", f"prompt {i}") for i in range(11)]


class Log(SearchObserver):
    """Each search's rollout seeds in plan order, and the size of the group it ran in."""

    def __init__(self):
        self.seeds, self.group_size = defaultdict(list), {}

    def rollout_requested(self, search, request):
        self.seeds[search.prompt.prompt_id, search.method, search.budget].append(request.seed)

    def search_finished(self, search, row):
        self.group_size[search.prompt.prompt_id, search.method, search.budget] = len(search.group.members)


class DroppedScores(SimRewardModel):
    """The sim reward, but NaN for about one response in nine (by its text: the same whatever the order)."""

    def score(self, requests):
        scores = super().score(requests)
        for request, score in zip(requests, scores):
            if hashlib.blake2b(request.response_text.encode(), digest_size=4).digest()[0] % 9 == 0:
                score.reward = float("nan")
        return scores


def _run(family: str, policy_batch: int, methods, budgets, drop: bool = False):
    log = Log()
    searches = search_grid(PROMPTS, methods, budgets, SearchConfig())
    rewards = DroppedScores(family=family) if drop else SimRewardModel(family=family)
    driver = Driver(searches, [SimGenerator(family=family), SimGenerator(family=family)], [rewards],
                    DriverConfig(max_batch_rollouts=7, policy_batch=policy_batch), 3, drop_nonfinite=drop,
                    ground_truth=SimGroundTruth(family), observer=log, calls=LocalCalls())
    rows, progress = driver.step(None)
    assert progress["done"] and len(rows) == len(searches)
    return {(r["prompt_id"], r["method"], r["budget"]): {k: v for k, v in r.items() if k != "wall_s"} for r in rows}, log


@pytest.mark.parametrize("family, drop", [("gaussian", False), ("discrete", False), ("bounded", False), ("gaussian", True),
                                          ("heavy", True)])
def test_a_search_draws_the_same_rollouts_and_reports_the_same_row_in_a_group_as_alone(family, drop):
    """Every method at budgets where the policies run best-of-N (8), screen (16: slg_share mixes
    share rounds and slg_adaptive's screening in one group) and share fully (64): 11 prompts in
    groups of 4, 4 and 3 against groups of one. Each search's seeds in plan order, and every field
    of its row (best reward, answer, node selected, prediction, tokens), are the same; also where
    the reward model drops scores (``reward.nonfinite=drop``), which one member's tail fit must not
    pass on to another's, to its last bit (there also at 160, where screening runs several rounds)."""
    methods = sorted(METHODS)
    budgets = [8, 16, 64, 160] if drop else [8, 16, 64]
    alone, alone_log = _run(family, 1, methods, budgets, drop)
    grouped, grouped_log = _run(family, 4, methods, budgets, drop)
    if drop:
        assert sum(row["dropped_scores"] for row in alone.values()) > 100
    assert set(alone_log.group_size.values()) == {1}
    for key, size in grouped_log.group_size.items():  # the oracle reads one search's true values: alone
        assert size == (1 if key[1] == "oracle" else 3 if key[0] in ("p8", "p9", "p10") else 4)
    assert grouped_log.seeds == alone_log.seeds
    assert grouped == alone


def test_groups_hold_one_method_budget_and_config_in_queue_order():
    config, other = SearchConfig(), SearchConfig()
    searches = search_grid(PROMPTS[:5], ["bon", "slg_share"], [16, 64], config) + search_grid(PROMPTS[:2], ["bon"], [16], other)
    groups = batches(searches, 3)
    assert [(g[0].method, g[0].budget, [s.prompt.prompt_id for s in g]) for g in groups] == [
        ("bon", 16, ["p0", "p1", "p2"]), ("slg_share", 16, ["p0", "p1", "p2"]), ("bon", 64, ["p0", "p1", "p2"]),
        ("slg_share", 64, ["p0", "p1", "p2"]), ("bon", 16, ["p3", "p4"]), ("slg_share", 16, ["p3", "p4"]),
        ("bon", 64, ["p3", "p4"]), ("slg_share", 64, ["p3", "p4"]), ("bon", 16, ["p0", "p1"])]  # another config: its own
    assert [len(g) for g in batches(searches, 1)] == [1] * len(searches)
    # a policy that draws random numbers or reads true values plays one search
    drawing = search_grid(PROMPTS[:3], ["slg"], [16], replace(config, state_selection=StateSelection.random))
    assert [len(g) for g in batches(drawing + search_grid(PROMPTS[:3], ["oracle"], [16], config), 8)] == [1] * 6


class InFlight(Log):
    """The most searches in flight at once: admitted (a first rollout asked) and not finished."""

    def __init__(self):
        super().__init__()
        self.started, self.running, self.most = set(), 0, 0

    def rollout_requested(self, search, request):
        if search.order not in self.started:
            self.started.add(search.order)
            self.running += 1
            self.most = max(self.most, self.running)

    def search_finished(self, search, row):
        super().search_finished(search, row)
        self.running -= 1


@pytest.mark.parametrize("window", [None, 4])
def test_groups_hold_at_most_half_the_searches_in_flight_and_never_take_more_than_that(window):
    """``driver.max_concurrent_prompts`` of 6 (or an order window of 4): groups of 3 (2), so that two
    take turns; a group is admitted only whole within the limit (a larger one would never be: the
    driver would wait for ever, here until its time is up)."""
    searches = search_grid(PROMPTS, ["bon", "slg_share"], [16], SearchConfig())
    log = InFlight()
    driver = Driver(searches, [SimGenerator()], [SimRewardModel()], DriverConfig(max_concurrent_prompts=6, policy_batch=8), 0,
                    observer=log, calls=LocalCalls(), in_order_window=window)
    rows, progress = driver.step(60)
    assert progress["done"] and len(rows) == len(searches)
    size = 3 if window is None else 2
    assert max(log.group_size.values()) == size
    assert log.most <= (6 if window is None else 4)


def _rollouts(rewards, state_index, state_score=None, finished=None):
    rewards = np.array([rewards], dtype=float)
    return Rollouts(rewards, rewards > 0, rewards > 1, np.array([state_index]),
                    None if state_score is None else np.array([state_score], dtype=float),
                    None if finished is None else np.array([finished]))


def test_stacked_rows_are_each_search_s_own_padded_as_a_replay_pads_them():
    """Rows of different counts (a member asked fewer, or none): past its count a row has no reward,
    no branch, no grade, no state, no prefix score and no finished response."""
    parts = [_rollouts([0.5, 2.0], [0, 1], [0.1, 0.2], [True, False]), _rollouts([], [], [], []),
             _rollouts([3.0], [0], [np.nan], [True])]
    out = stacked(parts)
    assert np.array_equal(out.rewards, [[0.5, 2.0], [np.nan, np.nan], [3.0, np.nan]], equal_nan=True)
    assert out.can_branch.tolist() == [[True, True], [False, False], [True, False]]
    assert out.correct.tolist() == [[False, True], [False, False], [True, False]]
    assert out.state_index.tolist() == [[0, 1], [-1, -1], [0, -1]]
    assert np.array_equal(out.state_score, [[0.1, 0.2], [np.nan, np.nan], [np.nan, np.nan]], equal_nan=True)
    assert out.finished.tolist() == [[True, False], [False, False], [True, False]]
    same = stacked([_rollouts([1.0, 2.0], [0, -1]), _rollouts([4.0, 5.0], [-1, 0])])  # one width: side by side
    assert same.rewards.tolist() == [[1.0, 2.0], [4.0, 5.0]] and same.state_index.tolist() == [[0, -1], [-1, 0]]
    assert same.state_score is None and same.finished is None


def test_a_policy_batch_below_one_is_refused_in_one_line_before_anything_starts(capsys):
    from pipeline.cli.main import main

    assert main(["run", "driver.policy_batch=0", "output_dir=/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("driver.policy_batch must be >= 1, got 0") and len(err.splitlines()) == 1


def test_a_finished_search_s_record_is_freed_at_once():
    """A record and its group refer to each other; a finished search drops its side, so its states,
    slots and prefix scores go when it ends, not at the garbage collector's next full pass (rare in
    the driver's process: ``tune_collector_for_the_run``)."""
    import gc
    import weakref

    class Records(SearchObserver):
        def __init__(self):
            self.records = []

        def search_finished(self, search, row):
            self.records.append(weakref.ref(search))

    log = Records()
    searches = search_grid(PROMPTS, ["slg_share", "spec_rejection"], [16], SearchConfig())
    driver = Driver(searches, [SimGenerator()], [SimRewardModel()], DriverConfig(policy_batch=4), 0, observer=log,
                    calls=LocalCalls())
    gc.disable()  # only reference counts free them
    try:
        rows, _ = driver.step(None)
        assert len(log.records) == len(rows) == len(searches)
        assert [record() for record in log.records] == [None] * len(searches)
    finally:
        gc.enable()
