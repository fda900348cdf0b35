"""Whether prefix scores track rewards (``pipeline.stats.prefix_signal``), and where a user is told:
``slg replay`` on a bank, and ``slg run``'s summary and log."""

import json
import logging
import math

import numpy as np
import pytest

from pipeline.cli.main import main
from pipeline.jobs.report import prefix_warnings, summarise
from pipeline.offline.episodes import BankPrompt
from pipeline.stats.prefix_signal import TRACKING, PrefixSignal, prefix_correlation

T975 = {2: 4.302653, 4: 2.776445}  # Student's t 97.5% quantiles by degrees of freedom (printed tables)


def test_the_correlation_is_pearsons_and_weights_count_as_repeated_pairs():
    rng = np.random.default_rng(0)
    scores, rewards = rng.normal(size=40), rng.normal(size=40)
    rewards += 0.7 * scores
    assert prefix_correlation(scores, rewards) == pytest.approx(np.corrcoef(scores, rewards)[0, 1], abs=1e-12)
    weights = rng.integers(1, 5, size=40)  # a pair of weight k counts as k copies of it
    expected = np.corrcoef(np.repeat(scores, weights), np.repeat(rewards, weights))[0, 1]
    assert prefix_correlation(scores, rewards, weights / 7.0) == pytest.approx(expected, abs=1e-12)


def test_pairs_with_a_missing_side_are_left_out_and_too_few_say_nothing():
    scores = np.array([1.0, 2.0, np.nan, 3.0, 4.0])
    rewards = np.array([1.0, 3.0, 9.0, 2.0, np.inf])
    assert prefix_correlation(scores, rewards) == pytest.approx(np.corrcoef([1, 2, 3], [1, 3, 2])[0, 1])
    assert math.isnan(prefix_correlation([1.0, 2.0], [1.0, 2.0]))             # 2 pairs: no correlation
    assert math.isnan(prefix_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))   # one prefix score for all
    assert math.isnan(prefix_correlation([0.1] * 5, np.arange(5.0)))  # ... whose computed variance is 1.9e-34, not 0
    assert math.isnan(prefix_correlation([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))   # one reward for all
    with pytest.raises(ValueError, match="one shape"):
        prefix_correlation([1.0, 2.0, 3.0], [1.0, 2.0])


def test_the_correlation_stays_within_one_and_is_nan_where_both_variances_underflow():
    # exactly linear pairs whose computed correlation rounds to 1 + 2.2e-16 (found by a seeded search)
    x = np.array([0.36159505490948474, 1.3040000451301372, 0.9470809631292422, -0.7037352358069926, -1.2654214710460525])
    assert prefix_correlation(3.1 * x + 0.7, 0.3 * x - 2.0) == 1.0
    assert prefix_correlation(3.1 * x + 0.7, -0.3 * x - 2.0) == -1.0
    with np.errstate(invalid="ignore"):  # spreads of 1e-170: their squares underflow to 0, and 0 / 0 says nothing
        assert math.isnan(prefix_correlation([1e-170, 2e-170, 3e-170], [1e-170, 2e-170, 4e-170]))


def test_the_signal_is_the_mean_over_prompts_with_its_students_t_interval():
    signal = PrefixSignal.of([0.1, np.nan, 0.3, 0.5])
    assert (signal.mean, signal.num_prompts) == (pytest.approx(0.3), 3)
    assert signal.half_width == pytest.approx(T975[2] * 0.2 / math.sqrt(3), rel=1e-6)
    assert PrefixSignal.of([0.4, np.nan]) is None


@pytest.mark.parametrize("mean, half_width, says_nothing", [(0.0, 0.19, True), (0.1, 0.09, True), (0.1, 0.11, False),
                                                             (0.3, 0.05, False), (-0.5, 0.8, False)])
def test_it_says_nothing_only_where_the_whole_interval_is_below_tracking(mean, half_width, says_nothing):
    assert TRACKING == 0.2
    assert PrefixSignal(mean, half_width, 30).says_nothing is says_nothing


def test_a_bank_prompt_weighs_each_reward_by_its_chance_as_a_prompt_draw():
    """Two sampled states share a prefix (one state of weight 2/3, its pools joined); a prompt draw
    picks a state by weight, then a reward of its pool: the pairs, enumerated with those chances."""
    states = [[0.0, 1.0], [2.0, 3.0, 4.0, 5.0, 7.0, 8.0], [1.0, 6.0]]
    prompt = BankPrompt("p", states, state_texts=["a", "b", "a"], state_scores=[0.5, 2.0, 0.5])
    # state "a": rewards 0, 1, 1, 6, each 2/3 / 4 = 1/6; state "b": its 6 rewards, each 1/3 / 6 = 1/18
    scores = [0.5] * 4 * 3 + [2.0] * 6
    rewards = [0.0, 1.0, 1.0, 6.0] * 3 + [2.0, 3.0, 4.0, 5.0, 7.0, 8.0]
    assert prompt.prefix_correlation() == pytest.approx(np.corrcoef(scores, rewards)[0, 1], abs=1e-12)
    assert math.isnan(BankPrompt("p", states).prefix_correlation())  # no prefix scores


def write_bank(path, scores_of):
    """A JSONL bank of 40 prompts x 8 states x 16 rewards: state k's rewards around k, its prefix score
    ``scores_of(k, rng)``."""
    rng = np.random.default_rng(1)
    with open(path, "w") as handle:
        for p in range(40):
            states = [list(np.round(k + rng.normal(size=16), 3)) for k in range(8)]
            scores = [float(scores_of(k, rng)) for k in range(8)]
            handle.write(json.dumps({"prompt_id": f"p{p}", "states": states, "state_scores": scores}) + "\n")


@pytest.fixture
def slg_warnings():
    """The warnings of the ``slg`` logger (which does not propagate to the root, where caplog listens)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("slg").addHandler(handler)
    yield records
    logging.getLogger("slg").removeHandler(handler)


@pytest.mark.parametrize("methods, tracking, warned", [("bon,slg_share", False, True), ("bon,slg_share", True, False),
                                                       ("bon,slg_adaptive", False, False)])
def test_replay_warns_once_where_a_banks_prefix_scores_say_nothing_to_slg_share(tmp_path, slg_warnings, methods,
                                                                                tracking, warned):
    bank = tmp_path / "bank.jsonl"
    write_bank(bank, (lambda k, rng: k + rng.normal()) if tracking else (lambda k, rng: rng.normal()))
    out = tmp_path / "replay.json"
    assert main(["replay", "--bank", str(bank), "--budgets", "16", "--methods", methods, "--repeats", "2",
                 "--no-ceilings", "--workers", "1", "--no-progress", "--out", str(out)]) == 0
    lines = [record.getMessage() for record in slg_warnings]
    assert len(lines) == warned
    if warned:
        assert lines[0].startswith(f"bank {bank}: prefix scores do not track rewards") and "over 40 prompts" in lines[0]
    (row,) = json.loads(out.read_text())["prefix_signals"]  # written whatever the methods
    assert (row["bank"], row["prompts"], row["says_nothing"]) == (str(bank), 40, not tracking)
    assert (row["mean"] > 0.5) is tracking


def search_rows(method, correlations):
    return [{"prompt_id": f"p{i}", "method": method, "budget": 64, "best_reward": 1.0, "rollouts": 64,
             "tokens_generated": 10, "prefix_correlation": c} for i, c in enumerate(correlations)]


def test_a_runs_summary_reports_the_signal_and_warns_per_cell_where_it_says_nothing():
    results = (search_rows("bon", [None] * 6) + search_rows("slg_share", [0.0, 0.1, -0.1, 0.05, None, -0.05]))
    summary = summarise(results, ["bon", "slg_share"], [64])
    cell = summary["methods"]["slg_share"]["64"]["prefix_correlation"]
    values = np.array([0.0, 0.1, -0.1, 0.05, -0.05])
    assert cell == {"mean": pytest.approx(0.0), "ci95": pytest.approx(T975[4] * values.std(ddof=1) / math.sqrt(5), rel=1e-6),
                    "prompts": 5, "says_nothing": True}
    assert summary["methods"]["bon"]["64"]["prefix_correlation"] is None
    (line,) = prefix_warnings(summary)
    assert line.startswith("slg_share at N = 64: prefix scores do not track rewards") and "over 5 prompts" in line
    tracking = summarise(search_rows("slg_share", [0.4, 0.5, 0.3, 0.45]), ["slg_share"], [64])
    assert prefix_warnings(tracking) == []


def test_collect_measures_each_prompts_correlation_as_replay_will_on_the_bank():
    from conftest import run_in_process

    from pipeline.jobs.collection import NodeSamples, SampleRecorder, prefix_correlation_of, state_names

    results = run_in_process(["collect.num_states=4", "collect.completions_per_state=9", "data.num_prompts=3"],
                             SampleRecorder(False), collect=True)
    for result in results:
        names = state_names(result["samples"])
        scores = np.array([result["state_scores"][name] for name in names])
        rewards = [result["samples"][name].rewards for name in names]
        assert len(names) == 4 and np.isfinite(scores).all()
        # every state holds 9 rewards, so every reward is a prompt draw of chance 1 / 36, merged states or not
        expected = np.corrcoef(np.repeat(scores, 9), np.concatenate(rewards))[0, 1]
        assert prefix_correlation_of(result) == pytest.approx(expected, abs=1e-12)
    first = state_names(results[0]["samples"])
    unscored = dict(results[0], state_scores={**results[0]["state_scores"], first[0]: None})
    assert math.isnan(prefix_correlation_of(unscored))  # replay's bank has no state_scores then
    emptied = dict(results[0], samples={**results[0]["samples"], first[1]: NodeSamples(np.empty(0), None, [])})
    assert math.isnan(prefix_correlation_of(emptied))  # a state without a reward: replay refuses such a bank


def test_collect_weighs_merged_states_and_uneven_pools_as_prompt_draws():
    """Two of four states share a prefix (one state, drawn twice) and pools differ in size: a reward
    of a state of k slots of S and L pooled rewards is a prompt draw of chance k / (S L)."""
    from types import SimpleNamespace

    from pipeline.jobs.collection import prefix_correlation_of

    rng = np.random.default_rng(4)
    sizes, texts, scores = (5, 9, 3, 7), ("a", "b", "a", "c"), (0.3, -0.2, 0.3, 1.1)
    pools = [rng.normal(score, 1.0, size) for score, size in zip(scores, sizes)]
    result = {"prompt_id": "p", "samples": {"root": None, **{f"s{i}": SimpleNamespace(rewards=pool) for i, pool in enumerate(pools)}},
              "state_texts": {f"s{i}": text for i, text in enumerate(texts)},
              "state_scores": {f"s{i}": score for i, score in enumerate(scores)}}
    pooled = {"a": np.concatenate([pools[0], pools[2]]), "b": pools[1], "c": pools[3]}
    slots = {"a": 2, "b": 1, "c": 1}
    score_of = {"a": 0.3, "b": -0.2, "c": 1.1}
    s = np.concatenate([np.full(len(pooled[t]), score_of[t]) for t in "abc"])
    r = np.concatenate([pooled[t] for t in "abc"])
    w = np.concatenate([np.full(len(pooled[t]), slots[t] / 4 / len(pooled[t])) for t in "abc"])
    covariance = np.cov(s, r, aweights=w)
    expected = covariance[0, 1] / math.sqrt(covariance[0, 0] * covariance[1, 1])
    assert prefix_correlation_of(result) == pytest.approx(expected, abs=1e-12)


def test_collect_warns_where_its_prompts_prefix_scores_say_nothing(slg_warnings, caplog):
    from pipeline.jobs.collection import report_prefix_signal

    report_prefix_signal(PrefixSignal(0.02, 0.05, 47), 50)  # 3 of the 50 had no correlation
    (line,) = [record.getMessage() for record in slg_warnings]
    assert line.startswith("the 50 prompts collected: prefix scores do not track rewards") and "over 47 prompts" in line
    with caplog.at_level(logging.INFO, logger="slg"):
        report_prefix_signal(PrefixSignal(0.45, 0.05, 47), 50)
        report_prefix_signal(None, 1)
    assert len(slg_warnings) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "prefix scores of the 50 prompts collected: correlation of prefix score and reward +0.45 +- 0.05 over 47 prompts"]
