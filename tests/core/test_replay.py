"""Replay, banks and the CLI: the offline experiment engine end to end (curves: test_calibration.py)."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.offline.bank import parse_row, read_bank, simulate_bank, write_bank
from pipeline.offline.episodes import BankPrompt
from pipeline.offline.multipliers import interval_digits
from pipeline.offline.replay import compute_multiplier, format_table, replay, replay_job, replay_many, replay_rollouts
from pipeline.offline.worlds import make_world
from pipeline.search.methods import DEFAULT_METHODS
from pipeline.stats.pool import expected_max_of_pool


def by_method(results, budget):
    return {r.method: r for r in results if r.budget == budget}


def test_gaussian_replay_reproduces_the_reference_gains():
    results = replay(make_world("gaussian"), ["bon", "slg", "slg_adaptive", "oracle"], [100, 1000],
                     repeats=50, num_prompts=40, seed=1, workers=1)
    small, large = by_method(results, 100), by_method(results, 1000)
    # the published finite-budget table (docs/method.md): BoN 3.56 / 4.59, SLG 3.89 / 5.10 (300-400 repetitions).
    assert small["bon"].mean_best_reward == pytest.approx(3.546, abs=4 * small["bon"].ci95)
    assert large["bon"].mean_best_reward == pytest.approx(4.585, abs=4 * large["bon"].ci95)
    assert large["slg"].mean_best_reward == pytest.approx(5.12, abs=4 * large["slg"].ci95 + 0.02)
    assert large["slg"].compute_multiplier > 3
    assert large["slg_adaptive"].compute_multiplier > 3 * large["slg"].compute_multiplier
    assert large["slg"].regret_vs_oracle > 0  # the price of prediction error, paired
    assert all(r.rollouts_mean == r.budget for r in results)


def test_replay_is_reproducible():
    world = make_world("bimodal")
    one = replay(world, ["slg", "bon"], [100], repeats=10, num_prompts=30, seed=5, workers=1)
    two = replay(world, ["slg", "bon"], [100], repeats=10, num_prompts=30, seed=5, workers=1)
    assert [r.mean_best_reward for r in one] == [r.mean_best_reward for r in two]
    assert all(r.accuracy is not None and 0 <= r.accuracy <= 1 for r in one)


def test_bank_round_trip_and_replay(tmp_path):
    world = make_world("bimodal")
    rows = simulate_bank(world, num_prompts=6, num_states=16, num_completions=40, seed=2)
    path = tmp_path / "bank.jsonl"
    write_bank(path, rows)
    bank = read_bank(path)
    assert [p.prompt_id for p in bank] == [f"p{i}" for i in range(6)]
    assert bank[0].num_states == 16 and bank[0].correct is not None
    results = replay(bank, ["bon", "slg", "oracle"], [64], repeats=40, seed=0, workers=1)
    got = by_method(results, 64)
    assert got["bon"].compute_multiplier == pytest.approx(1.0, abs=0.2)
    assert got["oracle"].mean_best_reward >= got["slg"].mean_best_reward - 3 * got["slg"].ci95
    assert got["bon"].accuracy is not None


def test_bank_bon_is_exact_against_the_prompt_mixture():
    world = make_world("gaussian")
    bank_rows = simulate_bank(world, num_prompts=1, num_states=3, num_completions=4, seed=0)
    prompt = parse_row(bank_rows[0], "test")
    pool = np.concatenate(prompt.state_rewards)  # equal state sizes: the mixture is the flat pool
    assert prompt.bon_value(7) == pytest.approx(expected_max_of_pool(pool, 7))


@pytest.mark.parametrize("line, match", [
    ('{"prompt_id": "a", "states": [[1.0, NaN]]}', "not a finite number"),
    ('{"prompt_id": "a", "states": [[]]}', "empty"),
    ('{"prompt_id": "a", "states": []}', "non-empty list"),
    ('{"prompt_id": "a", "states": [[1.0, 2.0]], "correct": [[true]]}', "same shape"),
    ('{"prompt_id": "a", "states": [[1.0, "x"]]}', "not a finite number"),
    ('{"prompt_id": "a", "states": [[0.5, -1e200]]}', "reward 1 is -1e.200, not a finite number within"),
    ('{"prompt_id": "a", "states": [[0.5]], "state_scores": [1e101]}', "'state_scores' must hold one prefix score"),
    ('{"prompt_id": null, "states": [[0.5]]}', "'prompt_id' must be a string .that UTF-8 can hold. or an integer, got None"),
    ('{"prompt_id": "\\ud800", "states": [[0.5]]}', "'prompt_id' must be a string"),
    ('{"prompt_id": "a", "states": [[0.5]], "state_texts": ["\\udc00"]}', "'state_texts' must hold one prefix string"),
    ('{"prompt_id": "a", "states": [[0.5]], "responses": [["\\udc00"]]}', "'responses' must have the same shape"),
    ('{"prompt_id": "a", "states": [[0.5]], "responses": [[3]]}', "each text that UTF-8 can hold"),
    ('{"states": [[1.0]]}', "prompt_id"),
    ('not json', "not valid JSON"),
])
def test_bad_banks_are_refused_with_line_and_prompt(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt_id": "ok", "states": [[0.5]]}\n' + line + "\n")
    with pytest.raises(ValueError, match=match) as error:
        read_bank(path)
    assert "line 2" in str(error.value)


def test_interval_digits_show_two_significant_digits_and_survive_an_interval_without_any():
    assert [interval_digits(ci) for ci in (0.012, 0.0012, 1.2e-6, 1e-12)] == [4, 4, 7, 8]
    assert [interval_digits(ci) for ci in (0.0, float("nan"), float("inf"))] == [4, 4, 4]  # inf: log10 overflowed


def test_compute_multiplier_on_a_known_curve():
    curve = lambda n: float(np.log(n))  # noqa: E731
    assert compute_multiplier(curve, float(np.log(400)), 100) == 4.0
    assert compute_multiplier(curve, 1e9, 100) == ">1024"


def test_cli_replay_writes_json(tmp_path):
    out = tmp_path / "replay.json"
    code = main(["replay", "--world", "gaussian", "--param", "sigma0=0.5", "--prompts", "4", "--repeats", "5",
                 "--budgets", "100", "--workers", "1", "search.tail_fraction=0.3", "--out", str(out)])
    assert code == 0
    payload = json.loads(out.read_text())
    assert {r["method"] for r in payload["results"]} == set(DEFAULT_METHODS)
    assert set(payload["results"][0]) >= {"method", "budget", "mean_best_reward", "ci95", "compute_multiplier",
                                          "regret_vs_oracle", "accuracy", "compute_multiplier_range"}
    assert all(len(r["compute_multiplier_range"]) == 2 for r in payload["results"])


def test_replay_many_plays_every_target_once_and_reports_its_rollouts():
    targets = {"g": make_world("gaussian"), "d": make_world("discrete")}
    seen = []
    results = replay_many(targets, ["bon", "slg_adaptive"], [16, 64], repeats=3, num_prompts=5, seed=2, workers=1,
                          progress=seen.append)
    assert set(results) == {"g", "d"}
    assert sum(seen) == replay_rollouts(targets, ["bon", "slg_adaptive"], [16, 64], 3, 5) == 2 * 2 * 80 * 3 * 5
    alone = replay(targets["d"], ["bon", "slg_adaptive"], [16, 64], repeats=3, num_prompts=5, seed=2, workers=1)
    assert [r.mean_best_reward for r in alone] == [r.mean_best_reward for r in results["d"]]


def test_cli_replay_of_several_worlds_writes_one_json(tmp_path, capsys):
    out = tmp_path / "grid.json"
    # few ceiling samples: the ceilings are tested on their own (test_ceilings.py), here they only ride along
    assert main(["replay", "--world", "gaussian,bounded", "--prompts", "3", "--repeats", "2", "--budgets", "8,16",
                 "--methods", "bon,slg_adaptive", "--workers", "1", "--ceiling-samples", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "gaussian(sigma0=1, sigma1=1)" in printed.out and "bounded(" in printed.out
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 2 * 2 * 2 and {r["world"] for r in rows} == {"gaussian(sigma0=1, sigma1=1)",
                                                                     "bounded(mu0=1, sigma0=1, sigma1=1)"}
    assert main(["replay", "--world", "all", "--prompts", "2", "--repeats", "1", "--budgets", "4", "--methods",
                 "bon", "--workers", "1", "--ceiling-samples", "4", "--no-progress"]) == 0
    assert capsys.readouterr().out.count("replay on ") == 5


def test_cli_sim_bank_then_replay(tmp_path, capsys):
    bank = tmp_path / "b.jsonl"
    assert main(["sim-bank", "--family", "discrete", "--prompts", "3", "--states", "4", "--completions", "10",
                 "--seed", "1", "--out", str(bank)]) == 0
    assert main(["replay", "--bank", str(bank), "--repeats", "4", "--budgets", "20", "--workers", "1"]) == 0
    assert "slg_adaptive" in capsys.readouterr().out


def test_sim_bank_whose_one_prompt_is_beyond_free_memory_is_refused_in_one_line_before_a_reward_is_drawn(
        tmp_path, capsys, monkeypatch):
    import psutil

    from pipeline.offline.bank import BANK_BYTES_PER_REWARD
    from pipeline.offline.parquet_writer import CHUNK_REWARDS

    bank, sizes = tmp_path / "b.jsonl", ["--prompts", "3", "--states", "4", "--completions", "10"]
    one_prompt = (4 * 10 + CHUNK_REWARDS) * BANK_BYTES_PER_REWARD  # a prompt beside a chunk being written
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=one_prompt - 1))
    assert main(["sim-bank", "--family", "gaussian", *sizes, "--out", str(bank)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--states 4 --completions 10: one prompt's 40 rewards, beside a chunk of {CHUNK_REWARDS:,}" in err
    assert not bank.exists()
    # a bank streams to disk: three prompts where memory holds one (and a chunk)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=one_prompt))
    assert main(["sim-bank", "--family", "gaussian", *sizes, "--out", str(bank)]) == 0
    assert len(bank.read_text().splitlines()) == 3


@pytest.mark.parametrize("family, params", [("gaussian", []), ("discrete", ["levels=7", "sigma0=5"]),
                                            ("bounded", ["sigma0=20"])])  # the last two print short rewards ("1.0")
def test_a_jsonl_sim_bank_beyond_the_free_disk_is_refused_in_one_line_before_a_reward_is_drawn(tmp_path, capsys,
                                                                                             monkeypatch, family, params):
    """A JSONL bank takes at least 5 bytes a reward (its shortest text, "0.0", and ", "): a disk with
    less free than that refuses the bank (exit 1, one line, no reward drawn, no file and no folder
    made), and one with just that much writes it, whose real size is no smaller (the bound holds)."""
    import shutil

    from pipeline.offline import bank as bank_module

    sizes = ["--prompts", "20", "--states", "4", "--completions", "64"]
    flags = [arg for param in params for arg in ("--param", param)]
    at_least = 20 * 4 * 64 * 5
    drawn = []
    monkeypatch.setattr(bank_module, "_simulated_row", lambda *args, real=bank_module._simulated_row: drawn.append(1) or real(*args))
    target = tmp_path / "new" / "b.jsonl"
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=at_least // 2))
    assert main(["sim-bank", "--family", family, *flags, *sizes, "--out", str(target)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--out {str(target)!r} needs at least 25.6 kB of disk, 12.8 kB are free in {tmp_path}" in err
    assert not drawn and not target.parent.exists()
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=at_least))
    assert main(["sim-bank", "--family", family, *flags, *sizes, "--out", str(target)]) == 0
    assert target.stat().st_size >= at_least


def test_a_bank_for_a_url_is_checked_against_the_temporary_folder_it_is_written_in_first(monkeypatch):
    import shutil
    import tempfile

    from pipeline.outputs.destinations import check_room

    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=999))
    with pytest.raises(OSError, match=f"needs at least 1.0 kB of disk, 999 bytes are free in {tempfile.gettempdir()}"):
        check_room("s3://bucket/b.jsonl", 1000, "--out")
    check_room("s3://bucket/b.jsonl", 999, "--out")
    check_room("/dev/stdout", 10**15, "--out")  # standard output: not this machine's disk to check


def test_sim_bank_to_stdout_is_the_bank_alone_and_its_summary_goes_to_stderr(capsys):
    assert main(["sim-bank", "--family", "bimodal", "--prompts", "3", "--states", "2", "--completions", "4", "--out", "/dev/stdout"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["prompt_id"] for line in out.splitlines()] == ["p0", "p1", "p2"]  # every line a bank line
    assert err.startswith("wrote 3 prompts x 2 states x 4 rollouts of bimodal")


@pytest.mark.parametrize("argv, match", [
    (["replay", "--world", "gaussian", "--prompts", "2", "--budgets", "0"], "budget N must be a positive integer, got 0"),
    # a replay would allocate a reward per rollout (46 GiB at 10^10) before failing
    (["replay", "--world", "gaussian", "--prompts", "2", "--budgets", "10000000000"],
     "budget N must be at most 10,000,000 (a replay holds 8 bytes a rollout of each episode), got 10,000,000,000 in budgets"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--budgets", ""], "--budgets: expected at least one integer"),
    # a repeated budget, method, world or bank would count its results twice and narrow the interval
    (["replay", "--world", "gaussian", "--prompts", "2", "--budgets", "16,16"], "budgets lists budget 16 twice: [16, 16]"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--methods", "bon,bon"], "methods lists method 'bon' twice"),
    (["replay", "--world", "gaussian,gaussian", "--prompts", "2"], "gaussian is listed twice"),
    (["replay", "--bank", "b.jsonl,b.jsonl"], "b.jsonl is listed twice"),
    (["replay", "--bank", "b.jsonl,./b.jsonl"], "b.jsonl and ./b.jsonl are the same bank"),
    (["replay", "--bank", f"b.jsonl,file://{os.getcwd()}/b.jsonl"], f"b.jsonl and file://{os.getcwd()}/b.jsonl are the same bank"),
    (["replay", "--bank", "b.jsonl", "--prompts", "2"], "--prompts applies to --world only"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--seed", "-1"], "--seed: expected an integer >= 0, got -1"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--workers", "0"], "--workers: expected an integer >= 1, got 0"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--param", "sigma0=1", "--param", "sigma0=2"],
     "--param sigma0 is given twice"),  # the second silently won
    # a length past int64 failed mid-replay (OverflowError); a billion samples a prompt ran for ever
    (["replay", "--world", "gaussian", "--prompts", "2", "--response-tokens", str(10**21)],
     f"--response-tokens must be at most 1000000000, got {10**21}"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--ceiling-samples", str(10**9)],
     "--ceiling-samples must be at most 100000, got 1000000000"),
    (["replay", "--world", "gaussian", "--prompts", "2", "search.reward_upper_bound=nan"],
     "search.reward_upper_bound must be a finite number"),
    (["replay", "--world", "gaussian", "--prompts", "2", "search.adaptive.confidence=nan"],
     "search.adaptive.confidence must be a finite number >= 0, got nan"),
    (["replay", "--world", "gaussian", "--prompts", "2", "search.share.prefix_gap=inf"],
     "search.share.prefix_gap must be a finite number >= 0, got inf"),
    # inf gave the prompt check NaN bounds (inf - inf), and a replay that ran on them
    (["replay", "--world", "gaussian", "--prompts", "2", "search.adaptive.confidence=inf"],
     "search.adaptive.confidence must be a finite number >= 0, got inf"),
    # predictions cut below what the rewards reach would tie the best nodes
    (["replay", "--world", "bounded", "--prompts", "2", "search.reward_upper_bound=0.5"],
     "search.reward_upper_bound=0.5 is below the rewards of bounded(mu0=1, sigma0=1, sigma1=1) (up to 1)"),
    (["replay", "--world", "gaussian", "--prompts", "2", "search.reward_upper_bound=100"], "(up to inf)"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--methods", "beam"], "unknown method 'beam'"),
    (["replay", "--world", "gauss", "--prompts", "2"], "unknown world family 'gauss'"),
    (["replay", "--world", "gaussian", "--prompts", "2", "search.tail_fraction=1.5"], "tail_fraction"),
    (["replay", "--world", "gaussian", "--prompts", "2", "search.tail_fractio=0.5"], "tail_fractio"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--budgets", "100", "search.rollouts_per_node=40",
      "search.num_states=4"], "more than the budget"),
    (["replay", "--world", "gaussian"], "--prompts is required"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--ceiling-samples", "1"],
     "--ceiling-samples: expected an integer >= 2, got 1"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--no-ceilings", "--ceiling-samples", "8"],
     "--ceiling-samples 8 shapes the ceilings that --no-ceilings skips"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--discovery-fraction", "0"],
     "--discovery-fraction: expected a fraction in (0, 1], got 0.0"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--discovery-fraction", "1.5"], "expected a fraction in (0, 1], got 1.5"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--discovery-fraction", "nan"], "expected a fraction in (0, 1], got nan"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--discovery-fraction", "half"], "got 'half'"),
    # negative numbers argparse's own pattern misses: the value, named, not "expected one argument"
    (["replay", "--world", "gaussian", "--prompts", "2", "--discovery-fraction", "-1e-3"], "got -0.001"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--discovery-fraction", "-inf"], "got -inf"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--seed", "-1E3"], "--seed: expected an integer >= 0, got '-1E3'"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--no-ceilings", "--discovery-fraction", "0.5"],
     "--discovery-fraction 0.5 shapes the ceilings that --no-ceilings skips"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--per-prompt", "--out", "/nonexistent/x.json"],
     "--per-prompt writes a bank's prompts: a world's prompts are fresh draws"),
    (["replay", "--bank", "data/toy_bank/bank.jsonl", "--per-prompt"], "--per-prompt writes a bank's prompts to --out: give --out FILE"),
    (["replay", "--bank", "/nonexistent.jsonl"], "does not exist"),
    (["replay", "--bank", "/"], "is a folder without Parquet shards"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--param", "sigma0"], "KEY=VALUE"),
    (["replay", "--bank", ",", "--budgets", "2"], "argument --bank: expected at least one name, got ','"),
    (["replay", "--world", "", "--prompts", "2"], "argument --world: expected at least one name, got ''"),
    (["curves", "--world", " ", "--states", "3"], "argument --world: expected a name, got ' '"),
    (["curves", "--bank", "data/toy_bank/bank.jsonl", "--states", "3"], "--states applies to --world only"),
    # parameters whose rewards overflow the statistics, or whose world has no finite best of n
    (["replay", "--world", "gaussian", "--prompts", "2", "--param", "sigma0=1e300"], "sigma0=1e+300 must be a finite number within"),
    (["replay", "--world", "bimodal", "--prompts", "2", "--param", "mu_correct=-2e6"], "mu_correct=-2000000.0 must be"),
    (["replay", "--world", "gaussian", "--prompts", "2", "--param", "prefix_noise=1e7"], "prefix_noise must be a number from 0"),
    (["replay", "--world", "heavy", "--prompts", "2", "--param", "df=1"], "world parameter df must be > 1, got 1.0"),
    (["replay", "--world", "discrete", "--prompts", "2", "--param", "levels=10001"], "levels must be an integer from 2 to 10000"),
    (["bench", "--budget", "10000001"], "budget N must be at most 10,000,000"),
    (["replay", "--world", "gaussian,heavy", "--prompts", "2", "--param", "sigma0=2"], "a single world family"),
    # one override syntax for every command: search options as `slg run` takes them, nothing else
    (["replay", "--world", "gaussian", "--prompts", "2", "tail_fraction=0.3"], "takes search options only"),
    (["replay", "--world", "gaussian", "--prompts", "2", "generator.num_replicas=2"], "takes search options only"),
    (["replay", "--world", "gaussian", "--prompts", "2", "search.adaptive.root_fraction=1.5"], "root_fraction"),
    (["bench", "--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["bench", "--repeats", "2", "--replicas", "1,2"], "--repeats 2 cannot go with --replicas 1,2"),
    (["frobnicate"], "invalid choice"),
    (["--nosuch"], "unrecognized argument '--nosuch': the command comes first"),
])
def test_cli_bad_input_is_one_line_and_exit_code_2(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_the_replay_library_refuses_what_the_cli_refuses():
    from pipeline.offline.episodes import BankPrompt
    from pipeline.search.config import SearchConfig

    bank = [BankPrompt("p", [[0.2, 0.9], [0.1, 0.4]])]
    with pytest.raises(ValueError, match=r"reward_upper_bound=0.5 is below the rewards of bank \(up to 0.9\)"):
        replay(bank, ["bon"], [2], 1, config=SearchConfig(reward_upper_bound=0.5))
    assert replay(bank, ["bon"], [2], 1, config=SearchConfig(reward_upper_bound=0.9))  # the largest reward is fine
    with pytest.raises(ValueError, match=r"budgets lists budget 2 twice: \[2, 2\]"):
        replay(bank, ["bon"], [2, 2], 1)
    with pytest.raises(ValueError, match="methods lists method 'bon' twice"):
        replay(bank, ["bon", "bon"], [2], 1)
    with pytest.raises(ValueError, match="ceiling samples must be at least 2, got 1"):  # one has no Monte Carlo error
        replay_job({"b": bank}, ["bon"], [2], 1, with_ceilings=True, ceiling_samples=1)
    with pytest.raises(ValueError, match=r"the discovery fraction must be in \(0, 1\], got 0"):
        replay_job({"b": bank}, ["bon"], [2], 1, with_ceilings=True, discovery_fraction=0)


def test_core_imports_no_engine_or_ray():
    code = ("import sys, pipeline.stats.tail, pipeline.stats.schedule, pipeline.stats.pool, pipeline.search.methods, "
            "pipeline.offline.replay, pipeline.cli, pipeline.offline.calibration; "
            "print(sorted(m for m in ('ray', 'vllm', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_module_entry_point_matches_console_script():
    done = subprocess.run([sys.executable, "-m", "pipeline.run", "replay", "--world", "x", "--prompts", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown world family 'x'" in done.stderr


def test_pool_exceeded_is_set_exactly_where_an_episode_draws_more_from_a_state_than_it_holds():
    """Rewards name their state here (disjoint values), so the draws from each pool are counted from
    what the source returned, independently of its own counters."""
    from pipeline.offline.episodes import BankPrompt, BankSource
    from pipeline.search.protocol import NO_NODE, ROOT, Request

    pools = [[0.0, 0.1], [1.0, 1.1, 1.2, 1.3], [2.0, 2.1, 2.2]]
    prompt = BankPrompt("p", pools)
    rng = np.random.default_rng(3)
    source = BankSource(prompt, 400, rng)
    draws = np.zeros((400, 3), dtype=int)
    roots = source.draw(Request.uniform(ROOT, 3, 400))
    draws += np.stack([(np.floor(roots.rewards) == k).sum(axis=1) for k in range(3)], axis=1)
    for _ in range(3):
        node = np.where(rng.random(400) < 0.2, NO_NODE, rng.integers(0, 3, 400))  # continue a root rollout
        got = source.draw(Request.per_episode(node, rng.integers(0, 3, 400)))
        draws += np.stack([np.nansum(np.floor(got.rewards) == k, axis=1) for k in range(3)], axis=1)
    expected = (draws > np.array([len(p) for p in pools])).any(axis=1)
    assert 0 < expected.sum() < 400  # both kinds of episode occur
    assert (source.pool_exceeded() == expected).all()


def test_replay_flags_the_budgets_that_outgrow_a_pool_and_strict_refuses_them(tmp_path, capsys):
    bank = [BankPrompt(f"p{i}", [[0.1 * k + 0.01 * i for k in range(8)]]) for i in range(3)]  # one state of 8 each
    results = replay(bank, ["bon"], [8, 9], repeats=20, workers=1)
    assert [r.pool_exceeded for r in results] == [False, True]  # every draw is from the one state: 9 > 8
    assert replay(make_world("gaussian"), ["bon"], [8], 2, num_prompts=2, workers=1)[0].pool_exceeded is None
    table = format_table(results).splitlines()
    assert table[0].split()[-1] == "pool" and table[2].endswith(" -") and table[3].endswith("redrawn")
    assert table[-1].startswith("redrawn:") and "favours bon" in table[-1]
    with pytest.raises(ValueError, match=r"--strict: budget 9 can draw more rollouts from one state than its pool holds "
                                         r"\(bank, prompt 'p0' state 0: 8 rewards\)"):
        replay(bank, ["bon"], [8, 9], repeats=2, workers=1, strict=True)
    assert replay(bank, ["bon"], [8], repeats=2, workers=1, strict=True)[0].pool_exceeded is False
    path = tmp_path / "b.jsonl"
    write_bank(path, [{"prompt_id": p.prompt_id, "states": [s.tolist() for s in p.state_rewards]} for p in bank])
    assert main(["replay", "--bank", str(path), "--budgets", "4,9", "--strict", "--repeats", "2", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--strict: budget 9" in err


def test_a_multiplier_on_a_curve_flat_within_the_interval_reads_saturated():
    from pipeline.offline.multipliers import SATURATED

    flat = lambda n: 1.0 - 0.5 ** n  # noqa: E731  reaches 1 to within 1e-16 by n = 60
    assert compute_multiplier(flat, 1.0, 100) == SATURATED  # BoN's own value at N = 100 (ci 0)
    assert compute_multiplier(flat, 0.999, 100, ci95=0.01) == SATURATED  # the interval holds the curve's top
    assert compute_multiplier(flat, 0.75, 100, ci95=0.01) == 0.02  # where the curve still rises: n* = 2
    assert compute_multiplier(flat, 1.5, 100, ci95=0.1) == ">1024"
    rising = lambda n: float(np.log(n))  # noqa: E731
    assert compute_multiplier(rising, float(np.log(400)), 100, ci95=0.05) == 4.0
    results = replay(make_world("discrete"), ["bon"], [256, 1000], repeats=20, num_prompts=50, workers=1)
    assert [r.compute_multiplier for r in results] == [SATURATED, SATURATED]  # was 0.66x and 0.17x of itself
    assert replay(make_world("gaussian"), ["bon"], [256], repeats=20, num_prompts=50, workers=1)[0].compute_multiplier \
        == pytest.approx(1.0, abs=0.15)


def test_a_multiplier_s_range_is_that_of_the_ends_of_the_mean_s_interval():
    """``compute_multiplier_range``: the multipliers of mean best reward -+ ci95, each the smallest n
    whose exact best-of-N value (the world's ``prompt_value``) reaches it, by a linear scan, over the
    rollouts the method spent; it holds the multiplier. In the JSON of ``slg replay --out`` too."""
    world = make_world("gaussian")
    results = replay(world, ["bon", "slg_share"], [16, 64], repeats=20, num_prompts=50, workers=1)
    for r in results:
        low, high = (next(n for n in range(1, 1024 * r.budget) if world.prompt_value(n) >= target - 1e-12 * abs(target))
                     / r.rollouts_mean for target in (r.mean_best_reward - r.ci95, r.mean_best_reward + r.ci95))
        assert r.compute_multiplier_range == pytest.approx([low, high], rel=1e-12)
        assert low <= r.compute_multiplier <= high and high > low
    assert "95%" in format_table(results).splitlines()[0]
    # over the rollouts spent, as the multiplier: on log n, a mean of log 400 +- log 2 at N = 100, 200 rollouts spent
    from pipeline.offline.multipliers import curve_of
    from pipeline.offline.replay import MethodResult, _add_multipliers
    from pipeline.offline.responses import TokenModel

    spent = MethodResult("m", 100, float(np.log(400)), float(np.log(2)), None, None, None, 200.0, 1, 1, tokens_mean=80_000.0)
    _add_multipliers(curve_of(lambda n: float(np.log(n))), [spent], [], TokenModel())
    assert spent.compute_multiplier == 2.0 and spent.compute_multiplier_range == [1.0, 4.0]


def test_a_banks_ceilings_carry_their_monte_carlo_error_and_its_multipliers(tmp_path, capsys):
    """The clairvoyant ceiling of a bank is exact (no interval); paid discovery's interval is the
    prompts' discovery variances together, 1.96 sqrt(sum var_i) / P, each prompt's from its own streams
    (seed, budget, i); the multipliers of the interval's ends are the smallest n whose exact best-of-N
    value (averaged over the prompts) reaches each. A world's two ceilings both carry one. The JSON of
    ``slg replay --out`` and its printed table hold them."""
    from pipeline.offline.ceilings import PromptArms

    rows = simulate_bank(make_world("bimodal"), num_prompts=5, num_states=6, num_completions=30, seed=4)
    write_bank(tmp_path / "b.jsonl", rows)
    out = tmp_path / "replay.json"
    assert main(["replay", "--bank", str(tmp_path / "b.jsonl"), "--methods", "bon", "--budgets", "8,32", "--repeats",
                 "2", "--seed", "7", "--workers", "1", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    ceilings = {(c["ceiling"], c["budget"]): c for c in json.loads(out.read_text())["ceilings"]}
    prompts = read_bank(tmp_path / "b.jsonl")
    for budget in (8, 32):
        clairvoyant = ceilings[("clairvoyant", budget)]
        assert clairvoyant["ci95"] == 0.0 and clairvoyant["compute_multiplier_range"] == [clairvoyant["compute_multiplier"]] * 2
        estimates = [PromptArms(p).paid_discovery(budget, np.random.default_rng([7, budget, i])) for i, p in enumerate(prompts)]
        paid = ceilings[("paid_discovery", budget)]
        assert paid["mean_best_reward"] == pytest.approx(np.mean([e.mean for e in estimates]), abs=1e-12)
        assert paid["ci95"] == pytest.approx(1.96 * np.sqrt(sum(e.variance for e in estimates)) / 5, rel=1e-9)
        assert paid["ci95"] > 0
        curve = [np.mean([float(p.bon_value(n)) for p in prompts]) for n in range(1, 64 * budget)]
        ends = [next(n for n, v in enumerate(curve, 1) if v >= target - 1e-12) / budget
                for target in (paid["mean_best_reward"] - paid["ci95"], paid["mean_best_reward"] + paid["ci95"])]
        assert paid["compute_multiplier_range"] == pytest.approx(ends, rel=1e-12)
        assert f"{paid['mean_best_reward']:.4f} +- " in printed
    world = replay_job({"w": make_world("gaussian")}, ["bon"], [16], 2, num_prompts=3, seed=1, workers=1, with_ceilings=True)
    assert all(row["ci95"] > 0 and len(row["compute_multiplier_range"]) == 2 for row in world.ceilings["w"])


def test_ceiling_samples_size_the_estimated_ceilings(tmp_path):
    """``--ceiling-samples K``: a bank's paid discovery averages K discoveries a prompt (the same as
    ``PromptArms.paid_discovery`` with ``draws=K`` on the prompt's own streams), a world's ceilings K
    fresh prompts (``world_ceilings`` with ``num_prompts=K``), and ``--out`` records K."""
    from pipeline.offline.ceilings import CEILINGS, PromptArms, world_ceilings

    rows = simulate_bank(make_world("bimodal"), num_prompts=3, num_states=5, num_completions=20, seed=2)
    write_bank(tmp_path / "b.jsonl", rows)
    out = tmp_path / "replay.json"
    assert main(["replay", "--bank", str(tmp_path / "b.jsonl"), "--methods", "bon", "--budgets", "16", "--repeats", "2",
                 "--seed", "5", "--workers", "1", "--no-progress", "--ceiling-samples", "9", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    paid = next(c for c in written["ceilings"] if c["ceiling"] == "paid_discovery")
    estimates = [PromptArms(p).paid_discovery(16, np.random.default_rng([5, 16, i]), draws=9)
                 for i, p in enumerate(read_bank(tmp_path / "b.jsonl"))]
    assert written["ceiling_samples"] == 9
    assert main(["replay", "--bank", str(tmp_path / "b.jsonl"), "--methods", "bon", "--budgets", "16", "--repeats", "2",
                 "--workers", "1", "--no-progress", "--no-ceilings", "--out", str(out)]) == 0
    skipped = json.loads(out.read_text())
    assert skipped["ceilings"] == [] and skipped["ceiling_samples"] is None and skipped["discovery_fraction"] is None
    assert paid["mean_best_reward"] == pytest.approx(np.mean([e.mean for e in estimates]), abs=1e-12)
    assert paid["ci95"] == pytest.approx(1.96 * np.sqrt(sum(e.variance for e in estimates)) / 3, rel=1e-9)
    world = make_world("gaussian")
    found = replay_job({"w": world}, ["bon"], [16], 2, num_prompts=2, seed=1, workers=1, with_ceilings=True,
                       ceiling_samples=5).ceilings["w"]
    expected = world_ceilings(world, [16], num_prompts=5, seed=1)[16]
    assert [row["mean_best_reward"] for row in found] == pytest.approx([expected[name].mean for name in CEILINGS], abs=1e-12)


def test_the_discovery_fraction_sets_what_paid_discovery_spends_on_finding_states(tmp_path):
    """``--discovery-fraction F``: paid discovery spends F N on prompt draws before it shares the rest
    (a bank's as ``PromptArms.paid_discovery`` with that fraction on the prompt's own streams), and
    ``--out`` records F. With F = 1 nothing is left to share: the ceiling is best-of-N's exact value
    (the bank's pooled best-of-N, a world's ``prompt_value``), with no Monte Carlo error; below it
    something is left to share, and the ceiling is above best-of-N (not monotone in F: a smaller
    discovery finds fewer states to share among, here 1.738 at 0.1 against 1.775 at 0.5)."""
    from pipeline.offline.ceilings import PromptArms, world_ceilings
    from pipeline.offline.episodes import BankPrompt

    rows = simulate_bank(make_world("bimodal"), num_prompts=3, num_states=5, num_completions=20, seed=2)
    write_bank(tmp_path / "b.jsonl", rows)
    prompts = read_bank(tmp_path / "b.jsonl")
    paid = {}
    for fraction in ("0.5", "1", "0.1"):
        out = tmp_path / f"replay_{fraction}.json"
        assert main(["replay", "--bank", str(tmp_path / "b.jsonl"), "--methods", "bon", "--budgets", "16", "--repeats", "2",
                     "--seed", "5", "--workers", "1", "--no-progress", "--discovery-fraction", fraction, "--out", str(out)]) == 0
        written = json.loads(out.read_text())
        assert written["discovery_fraction"] == float(fraction)
        paid[fraction] = next(c for c in written["ceilings"] if c["ceiling"] == "paid_discovery")
    estimates = [PromptArms(p).paid_discovery(16, np.random.default_rng([5, 16, i]), discovery_fraction=0.5)
                 for i, p in enumerate(prompts)]
    assert paid["0.5"]["mean_best_reward"] == pytest.approx(np.mean([e.mean for e in estimates]), abs=1e-12)
    bon = np.mean([BankPrompt(p.prompt_id, p.state_rewards).bon_value(16) for p in prompts])
    assert paid["1"]["mean_best_reward"] == pytest.approx(bon, abs=1e-12) and paid["1"]["ci95"] == 0.0
    assert bon < paid["0.1"]["mean_best_reward"] and bon < paid["0.5"]["mean_best_reward"]
    world = make_world("gaussian")
    found = replay_job({"w": world}, ["bon"], [16], 2, num_prompts=2, seed=1, workers=1, with_ceilings=True,
                       ceiling_samples=5, discovery_fraction=1.0).ceilings["w"]
    assert found[1]["mean_best_reward"] == pytest.approx(world.prompt_value(16), abs=1e-12)
    expected = world_ceilings(world, [16], num_prompts=5, seed=1, discovery_fraction=0.5)[16]["paid_discovery"].mean
    found = replay_job({"w": world}, ["bon"], [16], 2, num_prompts=2, seed=1, workers=1, with_ceilings=True,
                       ceiling_samples=5, discovery_fraction=0.5).ceilings["w"]
    assert found[1]["mean_best_reward"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("one_prompt_a_chunk", [False, True])
def test_per_prompt_rows_follow_the_bank_s_prompts(tmp_path, monkeypatch, one_prompt_a_chunk):
    """``--per-prompt``: a row per prompt and budget, in the bank's order, under its own prompt id (the
    prompts' ids are out of order, and, with a chunk a prompt, each comes from a task of its own,
    whose outputs arrive in another order, as Ray's may):
    every method's mean best reward on a prompt whose rewards are all one value is that value; the
    exact best-of-N value is the pooled one (``expected_max_of_pool``, as the prompt's states are
    equal), the clairvoyant ceiling and paid discovery are ``PromptArms``'s on the prompt's own
    streams (seed, budget, index); and each method's rows average to its bank-wide mean."""
    from pipeline.offline import bank_reader
    from pipeline.offline.ceilings import PromptArms

    if one_prompt_a_chunk:
        from pipeline.offline import replay as replay_module
        from pipeline.offline.replay_tasks import LocalExecutor

        class Reversed(LocalExecutor):  # every task's output, last task first
            def run(self, tasks):
                return reversed(list(super().run(tasks)))

        monkeypatch.setattr(bank_reader, "CHUNK_REWARDS", 1)
        monkeypatch.setattr(replay_module, "_executor", lambda workers, rollouts: Reversed())
    rng = np.random.default_rng(4)
    rows = [{"prompt_id": "z-flat", "states": [[0.7] * 12, [0.7] * 12]},
            {"prompt_id": "a-mixed", "states": [rng.normal(0.0, 1.0, 12).tolist(), rng.normal(1.0, 0.5, 12).tolist()]},
            {"prompt_id": "m-flat", "states": [[-0.2] * 12, [-0.2] * 12, [-0.2] * 12]}]
    write_bank(tmp_path / "b.jsonl", rows)
    out = tmp_path / "replay.json"
    assert main(["replay", "--bank", str(tmp_path / "b.jsonl"), "--methods", "bon,slg_share", "--budgets", "4,8",
                 "--repeats", "3", "--seed", "2", "--workers", "1", "--no-progress", "--per-prompt", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    prompts = written["prompts"]
    assert [(r["prompt_id"], r["budget"]) for r in prompts] == [(p, n) for n in (4, 8) for p in ("z-flat", "a-mixed", "m-flat")]
    for row in prompts:
        if row["prompt_id"].endswith("flat"):
            value = 0.7 if row["prompt_id"] == "z-flat" else -0.2
            assert row["mean_best_reward"] == {"bon": pytest.approx(value), "slg_share": pytest.approx(value)}
        index = ("z-flat", "a-mixed", "m-flat").index(row["prompt_id"])
        prompt = read_bank(tmp_path / "b.jsonl")[index]
        assert row["best_of_n"] == pytest.approx(expected_max_of_pool(np.sort(prompt.rewards), row["budget"]), abs=1e-12)
        arms = PromptArms(prompt)
        assert row["clairvoyant"] == pytest.approx(arms.clairvoyant(row["budget"]), abs=1e-12)
        paid = arms.paid_discovery(row["budget"], np.random.default_rng([2, row["budget"], index]))
        assert row["paid_discovery"] == pytest.approx(paid.mean, abs=1e-12)
        assert row["paid_discovery_ci95"] == pytest.approx(1.96 * math.sqrt(paid.variance), abs=1e-12)
    for result in written["results"]:
        mine = [r["mean_best_reward"][result["method"]] for r in prompts if r["budget"] == result["budget"]]
        assert result["mean_best_reward"] == pytest.approx(np.mean(mine), abs=1e-12)
    with pytest.raises(ValueError, match="per-prompt results are a bank's"):
        replay_job({"w": make_world("gaussian")}, ["bon"], [4], 1, num_prompts=2, per_prompt=True)
    from pipeline.offline.bank_reader import MemoryBank

    unlisted = MemoryBank(read_bank(tmp_path / "b.jsonl"), "b")
    unlisted.prompt_ids = unlisted.prompt_ids[:2]  # a bank that lists fewer prompts than it plays: no row may shift
    with pytest.raises(ValueError, match="2 prompt ids for 3 prompts played"):
        replay_job({"b": unlisted}, ["bon"], [4], 1, workers=1, per_prompt=True)


def test_the_lockstep_search_finds_what_bisection_finds():
    from pipeline.offline.multipliers import Cell, find_multipliers

    rng = np.random.default_rng(0)
    for _ in range(20):
        steps = np.cumsum(rng.exponential(size=3000) * (rng.random(3000) < 0.3))  # monotone, with flat stretches
        budget = int(rng.integers(1, 4))
        cells = [Cell(float(rng.uniform(0, steps[-1] * 1.1)), 0.0, budget) for _ in range(5)]
        passes = []
        found = find_multipliers(lambda ns, steps=steps, passes=passes: passes.append(ns) or
                                 {n: float(steps[min(n, 3000) - 1]) for n in ns}, cells)
        for cell, multiplier in zip(cells, found):
            limit, tolerance = 1024 * budget, 1e-12 * max(1, cell.mean)
            top = steps[min(limit, 3000) - 1]
            if top < cell.mean - tolerance:
                assert multiplier == ">1024"
            elif top <= cell.mean + tolerance:
                assert multiplier == "saturated"
            else:  # the smallest n that reaches the mean, by a linear scan
                assert multiplier == next(n for n in range(1, limit + 1) if steps[min(n, 3000) - 1] >= cell.mean - tolerance) / budget
        assert len(passes) < 12  # a bisection of [1, 3072] takes 12


def test_a_streamed_bank_replays_as_the_same_bank_in_memory(tmp_path, monkeypatch):
    from pipeline.offline import bank_reader
    from pipeline.offline.bank_reader import StreamedBank

    rows = simulate_bank(make_world("bimodal"), num_prompts=5, num_states=6, num_completions=20, seed=4)
    write_bank(tmp_path / "b.parquet", rows)
    in_memory = replay_job({"b": read_bank(tmp_path / "b.parquet")}, ["bon", "slg", "oracle"], [16, 64], 8, seed=3,
                           workers=1, with_ceilings=True)
    monkeypatch.setattr(bank_reader, "CHUNK_REWARDS", 250)  # two prompts a chunk
    streamed = replay_job({"b": StreamedBank(tmp_path / "b.parquet")}, ["bon", "slg", "oracle"], [16, 64], 8, seed=3,
                          workers=1, with_ceilings=True)
    assert streamed == in_memory
    exceeded = {r.method: r.pool_exceeded for r in in_memory.results["b"] if r.budget == 64}
    assert exceeded == {"bon": False, "slg": True, "oracle": True}  # 64 from the prompt spread over 6 pools of 20


def test_results_do_not_depend_on_the_order_tasks_finish_in(tmp_path, monkeypatch):
    """Ray returns tasks as they finish: a replay whose tasks all come back in reverse is the same replay."""
    from pipeline.offline import bank_reader
    from pipeline.offline import replay as replay_module
    from pipeline.offline.replay_tasks import LocalExecutor

    class Reversed(LocalExecutor):
        def run(self, tasks):
            return reversed(list(super().run(tasks)))

    rows = simulate_bank(make_world("bimodal"), num_prompts=6, num_states=4, num_completions=10, seed=1)
    monkeypatch.setattr(bank_reader, "CHUNK_REWARDS", 40)  # a prompt a chunk: six parts to put back in order
    # several tasks per world budget too, and at budget 32 each bank prompt's 3 repeats in 2 parts
    monkeypatch.setattr(replay_module, "EPISODE_ROLLOUTS_PER_TASK", 64)
    targets = {"w": make_world("heavy"), "b": [parse_row(row, "") for row in rows]}
    here = replay_job(targets, ["bon", "slg"], [8, 32], 3, num_prompts=7, seed=2, workers=1, with_ceilings=True,
                      ceiling_samples=8)
    monkeypatch.setattr(replay_module, "_executor", lambda workers, rollouts: Reversed())
    assert replay_job(targets, ["bon", "slg"], [8, 32], 3, num_prompts=7, seed=2, workers=2, with_ceilings=True,
                      ceiling_samples=8) == here


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_bank_bon_with_states_of_different_sizes_equals_brute_force(n):
    """A rollout from the prompt picks a state uniformly, then one of its rewards uniformly: enumerate
    every n-tuple of (state, reward) draws with its probability. Unequal sizes make this differ from
    the flat pool (reward 0.0, alone in its state, has probability 1/3 here, not 1/6)."""
    import itertools
    from fractions import Fraction

    from pipeline.offline.episodes import BankPrompt

    states = [[0.0], [1.0, 3.0], [2.0, 0.5, -1.0]]
    draws = [(Fraction(1, len(states) * len(s)), reward) for s in states for reward in s]
    exact = sum(math.prod(p for p, _ in combo) * Fraction(max(r for _, r in combo))
                for combo in itertools.product(draws, repeat=n))
    prompt = BankPrompt("unequal", states)
    assert float(prompt.bon_value(n)) == pytest.approx(float(exact), rel=1e-12)  # float summation only


def test_a_bank_prompt_whose_repeats_overflow_a_task_is_played_in_parts(monkeypatch):
    """A task holds at most EPISODE_ROLLOUTS_PER_TASK rollouts (that bounds a worker's memory): a bank
    prompt's repeats are cut into near-equal parts, alike for every method of a budget, every repeat
    played once, each part on streams of its own (not the same episodes again)."""
    from pipeline.offline import replay as replay_module
    from pipeline.offline.responses import TokenModel
    from pipeline.search.config import SearchConfig

    limit = 1000
    monkeypatch.setattr(replay_module, "EPISODE_ROLLOUTS_PER_TASK", limit)
    played = {("bon", 64): 64, ("slg", 64): 64, ("bon", 4): 4, ("slg", 4): 4}
    plays = replay_module._plays("b", ["bon", "slg"], [4, 64], 0, 3, 50, 0, SearchConfig(), TokenModel(), played, bank=True)
    big = [p for p in plays if p.budget == 64]
    assert all(p.rollouts <= limit for p in big) and {p.stop - p.start for p in big} == {1}
    for method in ("bon", "slg"):
        for index in range(3):
            parts = sorted((p.part, p.repeats) for p in big if p.method == method and p.start == index)
            assert [part for part, _ in parts] == [0, 1, 2, 3] and sum(r for _, r in parts) == 50  # 50 x 64 / 1000 -> 4 parts
            assert max(r for _, r in parts) - min(r for _, r in parts) <= 1
    small = [p for p in plays if p.budget == 4]  # 3 x 50 x 4 rollouts fit one task: the prompts are not cut
    assert [(p.start, p.stop, p.repeats, p.part) for p in small] == [(0, 3, 50, 0)] * 2

    rows = simulate_bank(make_world("gaussian"), num_prompts=2, num_states=4, num_completions=200, seed=5)
    bank = [parse_row(row, "") for row in rows]
    results = replay(bank, ["bon"], [64], 50, seed=1, workers=1)
    assert results[0].prompts == 2 and results[0].rollouts_mean == 64  # every part's episodes counted once
    from pipeline.offline.replay_tasks import play

    parts = [play(p, bank, 0).best for p in replay_module._plays("b", ["bon"], [64], 0, 1, 50, 1, SearchConfig(),
                                                                  TokenModel(), {("bon", 64): 64}, bank=True)]
    assert sum(part.shape[1] for part in parts) == 50
    assert len({part[0, :12].tobytes() for part in parts}) == len(parts)  # each part its own episodes


def test_a_process_reads_a_bank_slice_once_and_again_when_the_file_changes(tmp_path):
    """Ray runs a chunk's tasks in a row on one worker: each reads the slice, so a worker keeps the
    last slices read; a bank rewritten in place (a new collect at the same path) is read anew."""
    import os

    from pipeline.offline.bank_reader import StreamedBank
    from pipeline.offline.replay_tasks import prompts_of

    path = tmp_path / "b.parquet"
    write_bank(path, simulate_bank(make_world("gaussian"), num_prompts=2, num_states=3, num_completions=5, seed=0))
    (piece,) = list(StreamedBank(path).slices())
    first = prompts_of(piece)
    assert prompts_of(piece) is first
    write_bank(path, simulate_bank(make_world("gaussian"), num_prompts=2, num_states=3, num_completions=5, seed=1))
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))  # a clock too coarse to tell
    again = prompts_of(piece)
    assert again is not first and not np.array_equal(again[0].rewards, first[0].rewards)


def test_parts_are_cut_alike_at_equal_tokens_bounded_by_the_largest_n_and_joined_whatever_the_order(monkeypatch):
    """At equal tokens the methods of one budget play different N: their bank prompts are cut into the
    same parts (or the paired differences would pair other episodes), each task within the bound at
    the largest N; exactly the bound is one task; parts come back in any order, per method, and are
    put back in place; and parts of two identical prompts are other episodes (no shared streams)."""
    import random

    from pipeline.offline import replay as replay_module
    from pipeline.offline.replay_tasks import LocalExecutor, play
    from pipeline.offline.responses import TokenModel
    from pipeline.search.config import SearchConfig

    limit = 100
    monkeypatch.setattr(replay_module, "EPISODE_ROLLOUTS_PER_TASK", limit)
    played = {("bon", 8): 8, ("slg", 8): 24}
    plays = replay_module._plays("b", ["bon", "slg"], [8], 0, 2, 7, 0, SearchConfig(), TokenModel(), played, bank=True)
    cuts = {m: [(p.start, p.stop, p.repeats, p.part) for p in plays if p.method == m] for m in ("bon", "slg")}
    assert cuts["bon"] == cuts["slg"] and len(cuts["bon"]) == 2 * 2  # 7 repeats x 24 > 100: two parts a prompt
    assert all(p.played * p.repeats * (p.stop - p.start) <= limit for p in plays)
    exact = replay_module._plays("b", ["bon"], [20], 0, 2, 5, 0, SearchConfig(), TokenModel(), {("bon", 20): 20}, bank=True)
    assert [(p.start, p.stop, p.repeats, p.part) for p in exact] == [(0, 1, 5, 0), (1, 2, 5, 0)]  # 100: one task each

    rows = simulate_bank(make_world("bimodal"), num_prompts=5, num_states=4, num_completions=20, seed=3)
    bank = [parse_row(row, "") for row in rows]

    class Shuffled(LocalExecutor):
        def run(self, tasks):
            done = list(super().run(tasks))
            random.Random(7).shuffle(done)
            yield from done

    budget_map = {("bon", 8): 8, ("slg", 8): 24, ("bon", 32): 32, ("slg", 32): 16}
    here = replay(bank, ["bon", "slg"], [8, 32], 7, seed=1, workers=1, budget_map=budget_map)
    monkeypatch.setattr(replay_module, "_executor", lambda workers, rollouts: Shuffled())
    assert replay(bank, ["bon", "slg"], [8, 32], 7, seed=1, workers=2, budget_map=budget_map) == here

    twin = [parse_row({**rows[0], "prompt_id": name}, "") for name in ("a", "b")]  # the same prompt twice
    parts = [play(p, twin, 0).best for p in replay_module._plays("b", ["bon"], [32], 0, 2, 8, 1, SearchConfig(),
                                                                  TokenModel(), {("bon", 32): 32}, bank=True)]
    assert len(parts) == 2 * 3 and len({part.tobytes() for part in parts}) == len(parts)


def test_a_statistic_one_episode_cannot_give_is_null_in_strict_json(tmp_path):
    """One prompt and one repeat leave no interval: NaN, which json.dumps wrote as `NaN`, not JSON."""
    out = tmp_path / "one.json"
    assert main(["replay", "--world", "gaussian", "--prompts", "1", "--repeats", "1", "--budgets", "8",
                 "--methods", "bon,slg", "--no-ceilings", "--workers", "1", "--out", str(out)]) == 0

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    results = json.loads(out.read_text(), parse_constant=refuse)["results"]
    assert [(r["ci95"], r["vs_bon_ci95"]) for r in results] == [(None, None), (None, None)]
    assert all(isinstance(r["mean_best_reward"], float) for r in results)
