"""Cost in tokens: replay's token counts and multipliers, methods matched at equal generated tokens,
and the run summary's multipliers from best-of-N's measured budgets (checked against hand
computations and the token model's own expectation)."""

import json
import math

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.jobs.report import bon_reference, compute_multipliers, summarise
from pipeline.offline.episodes import BankPrompt, BankSource, run_episodes
from pipeline.offline.equal_cost import match_budgets
from pipeline.offline.replay import replay
from pipeline.offline.responses import TokenModel
from pipeline.offline.worlds import make_world
from pipeline.search.bon import BestOfN
from pipeline.search.config import SearchConfig


def test_best_of_n_tokens_follow_the_token_model():
    world_results = {r.method: r for r in replay(make_world("gaussian"), ["bon"], [50], repeats=40, num_prompts=20, workers=1)}
    bon = world_results["bon"]
    # geometric tails: a whole response is T + Geometric(1 / (400 - T)) tokens, 400 on average
    sd = math.sqrt(50 * (1 - 1 / 300) * 300 ** 2)  # of one episode's total
    assert bon.tokens_mean == pytest.approx(50 * 400, abs=4 * sd / math.sqrt(800))
    assert bon.rm_tokens_mean == pytest.approx(bon.tokens_mean + 50 * 32)  # the RM reads the prompt and the response
    assert bon.token_multiplier == pytest.approx(bon.compute_multiplier * 50 * 400 / bon.tokens_mean)
    bank = BankPrompt("p", [[0.1, 0.5], [0.2, 0.9, 0.3]])
    ledger = run_episodes(BestOfN(7, 5), BankSource(bank, 5, np.random.default_rng(0), TokenModel(state_tokens=8,
                                                                                                mean_response_tokens=30,
                                                                                                random_lengths=False)))
    assert (ledger.tokens == 7 * 30).all() and (ledger.rm_tokens == 7 * (30 + 32)).all()


def test_a_prefix_read_is_a_reward_model_item_as_a_rollouts_score_is():
    """slg_share on a bank with prefix scores: every reward-model item is a rollout's score or a prefix
    read. With the bank's constant lengths each score reads 32 + 400 tokens (a state's continuation
    300, plus its prefix's 100) and each prefix 32 + 100, so the items beyond the rollouts are the
    tokens beyond theirs over 132 (formats.md: rm_items_mean counts prefixes)."""
    from pipeline.search.share import SharedSLG

    rng = np.random.default_rng(0)
    bank = BankPrompt("p", [rng.normal(mean, 0.3, 64).round(2).tolist() for mean in np.linspace(-1, 1, 16)],
                      state_texts=[f"s{k}" for k in range(16)], state_scores=np.linspace(-1, 1, 16).tolist())
    ledger = run_episodes(SharedSLG(32, 200), BankSource(bank, 200, np.random.default_rng(1)))
    prefixes = (ledger.rm_tokens - ledger.spent * 432) / 132
    assert (prefixes >= 1).all() and np.array_equal(ledger.scored - ledger.spent, prefixes)


def test_equal_tokens_gives_each_method_the_n_that_spends_best_of_ns_tokens():
    world, budgets = make_world("gaussian"), [32, 128]
    methods = ["bon", "slg", "spec_rejection"]
    maps = match_budgets({"g": world}, methods, budgets, repeats=20, num_prompts=50, seed=0, config=SearchConfig(), workers=1)
    results = replay(world, methods, budgets, repeats=20, num_prompts=50, seed=0, workers=1, budget_map=maps["g"])
    for r in results:
        assert r.played_budget == maps["g"][(r.method, r.budget)]
        assert r.tokens_mean == pytest.approx(r.budget * 400, rel=0.05), r  # within 5% of best-of-N's tokens
        if r.method == "spec_rejection":
            assert r.played_budget > 1.5 * r.budget  # it stops most responses early: it can start more of them
        if r.method != "bon":
            assert r.vs_bon is not None and r.vs_bon_ci95 > 0
    assert all(maps["g"][("bon", b)] == b for b in budgets)


def test_summary_multipliers_interpolate_best_of_n_in_log_n_and_bound_beyond_it():
    rows = []
    for p in range(4):
        rows += [{"prompt_id": f"p{p}", "method": "bon", "budget": 16, "best_reward": 1.0, "rollouts": 16,
                  "tokens_generated": 1600, "correct": None, "pass_at_n": None, "majority_correct": None},
                 {"prompt_id": f"p{p}", "method": "bon", "budget": 64, "best_reward": 2.0, "rollouts": 64,
                  "tokens_generated": 6400, "correct": None, "pass_at_n": None, "majority_correct": None},
                 {"prompt_id": f"p{p}", "method": "x", "budget": 16, "best_reward": 1.5, "rollouts": 16,
                  "tokens_generated": 800, "correct": None, "pass_at_n": None, "majority_correct": None},
                 {"prompt_id": f"p{p}", "method": "x", "budget": 64, "best_reward": 2.5, "rollouts": 64,
                  "tokens_generated": 3200, "correct": None, "pass_at_n": None, "majority_correct": None}]
    summary = summarise(rows, ["bon", "x"], [16, 64])
    # 1.5 is halfway from 1.0 (n = 16) to 2.0 (n = 64) in log n: n* = 32, 3200 of best-of-N's tokens (100 a rollout)
    assert summary["methods"]["x"]["16"]["compute_multiplier"] == {"rollouts": pytest.approx(2.0), "tokens": pytest.approx(4.0)}
    assert summary["methods"]["x"]["64"]["compute_multiplier"] == {"rollouts": ">1", "tokens": ">2"}
    assert summary["methods"]["bon"]["64"]["compute_multiplier"] == {"rollouts": pytest.approx(1.0), "tokens": pytest.approx(1.0)}
    reference = bon_reference(rows, [16, 64])
    assert compute_multipliers(reference, 0.5, 16, 1600) == {"rollouts": "<1", "tokens": "<1"}


def test_cli_replay_at_equal_tokens_writes_the_n_played_and_refuses_bad_settings(tmp_path):
    out = tmp_path / "r.json"
    assert main(["replay", "--world", "gaussian", "--prompts", "10", "--repeats", "4", "--budgets", "16",
                 "--methods", "bon,spec_rejection", "--equal-tokens", "--workers", "1", "--out", str(out),
                 "search.spec_rejection.chunk_tokens=64"]) == 0
    results = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert results["spec_rejection"]["played_budget"] > 16 and results["bon"]["played_budget"] == 16
    assert main(["replay", "--world", "gaussian", "--prompts", "2", "--methods", "spec_rejection",
                 "search.spec_rejection.rejection_rate=1.5"]) == 2
    assert main(["replay", "--world", "gaussian", "--prompts", "2", "--methods", "spec_rejection", "--equal-tokens"]) == 2


def test_methods_of_one_budget_play_the_same_prompt_ranges_whatever_n_they_play(monkeypatch):
    """A world's streams are keyed by (seed, budget, first prompt of the task): at equal tokens a method
    that plays a larger N must be cut into the same prompt ranges as bon, or its episodes would see
    other prompts than bon's and the paired difference would pair nothing."""
    from pipeline.offline import replay as replay_module

    monkeypatch.setattr(replay_module, "EPISODE_ROLLOUTS_PER_TASK", 16 * 4 * 3)  # bon at 16: 3 prompts a task
    played = {("bon", 16): 16, ("slg", 16): 64}
    plays = replay_module._plays("w", ["bon", "slg"], [16], 0, 10, 4, 0, SearchConfig(), TokenModel(), played)
    ranges = {m: [(p.start, p.stop) for p in plays if p.method == m] for m in ("bon", "slg")}
    assert ranges["bon"] == ranges["slg"] and len(ranges["bon"]) == 10  # cut for the larger N: a prompt a task
    assert {(p.method, p.played) for p in plays} == {("bon", 16), ("slg", 64)}
