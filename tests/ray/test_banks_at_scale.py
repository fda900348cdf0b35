"""Banks at cluster scale through Ray: `slg collect` writes Parquet shards that other tools load and
resumes them after SIGTERM and SIGKILL to the bank of an uninterrupted run; SIGTERM ends `slg run`
in one line with code 143 and the rerun resumes; replay as Ray tasks gives the numbers of replay in
one process, to the last digit."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from conftest import check_rows_independently, run_in_process

from actors.sim import _SimWorld
from pipeline.cli import main
from pipeline.distributed.contract import StatePrefix
from pipeline.distributed.driver import rollout_seed
from pipeline.jobs.bank_writers import ParquetShards
from pipeline.jobs.collection import SampleRecorder, bank_row
from pipeline.jobs.config import load_run_config
from pipeline.jobs.prompts import load_prompts
from pipeline.jobs.report import summarise
from pipeline.offline.bank import read_bank, read_bank_rows, simulate_bank, write_bank
from pipeline.offline.bank_reader import StreamedBank
from pipeline.offline.replay import replay, replay_job
from pipeline.offline.worlds import make_world
from pipeline.search.methods import DEFAULT_METHODS

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
TERMINATED = "slg: terminated (SIGTERM); rerun the same command to resume"
# long enough to be stopped in the middle: 8 prompts, 2 a shard, 2 in flight, a generator as slow as a GPU's
COLLECT = ["collect.num_states=4", "collect.completions_per_state=200", "data.num_prompts=8", "collect.prompts_per_shard=2",
           "driver.max_concurrent_prompts=2", "generator.sim.latency_per_token_s=0.0001", "generator.sim.family=bimodal"]
RUN = ["data.num_prompts=4", "budgets=[32,64]", "plot=false", "driver.max_concurrent_prompts=2", "driver.max_batch_rollouts=8",
       "generator.sim.latency_per_token_s=0.0001"]


def own_ray_env() -> dict:
    """This environment without RAY_ADDRESS and RAY_AUTH_MODE, which an earlier ray.init in the test
    process sets: a command that starts its own Ray instance must choose its own mode, as a user's does
    (and with the variable set, Ray's token-authentication notice could never show)."""
    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}


def slg(*args) -> subprocess.Popen:
    # in a session of its own, so that the signal reaches Ray's processes too, as a preempted pod's would
    return subprocess.Popen([sys.executable, "-m", "pipeline.run", *args], env=own_ray_env(), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def stop_when(process, ready, sig) -> tuple[int, str]:
    deadline = time.time() + 240
    while not ready():
        assert process.poll() is None, f"the job ended first: {process.communicate()[1][-2000:]}"
        assert time.time() < deadline
        time.sleep(0.1)
    os.killpg(process.pid, sig)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def assert_terminated_in_one_line(code: int, err: str) -> None:
    assert code == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == TERMINATED
    assert "Traceback" not in err and "SIGTERM received" not in err and "logging.cc" not in err, err[-3000:]


def shards(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("part-*.parquet"))


def test_collect_resumes_after_sigterm_and_sigkill_to_the_bank_of_an_uninterrupted_run(tmp_path):
    bank = tmp_path / "bank"
    argv = ["collect", "--out", str(bank), *COLLECT]
    code, err = stop_when(slg(*argv), lambda: len(shards(bank)) >= 1, signal.SIGTERM)
    assert_terminated_in_one_line(code, err)
    after_sigterm = shards(bank)
    assert 1 <= len(after_sigterm) < 4
    code, _ = stop_when(slg(*argv), lambda: len(shards(bank)) > len(after_sigterm), signal.SIGKILL)
    before = len(shards(bank))
    assert code == -signal.SIGKILL and before < 4
    rerun = subprocess.run([sys.executable, "-m", "pipeline.run", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"({2 * before} already there)" in rerun.stderr  # whole shards are skipped, their prompts not collected again
    assert shards(bank) == [f"part-{i:05d}.parquet" for i in range(4)]
    # the uninterrupted bank: the same collect by an in-process driver, through the same writer
    config = load_run_config(None, [*COLLECT, f"collect.out={tmp_path / 'whole'}"])
    with ParquetShards(config, load_prompts(config.data), bank_row) as writer:
        writer.write(run_in_process(COLLECT, SampleRecorder(False, np.float32), collect=True))
    rows = read_bank_rows(bank)
    assert rows == read_bank_rows(tmp_path / "whole")
    # and one number from the world itself: prompt 5's state rewards are the sim's draws for their seeds
    row = rows[5]
    name = row["meta"]["state_nodes"][1]
    state = StatePrefix((rollout_seed(0, row["prompt_id"], "root", int(name[1:])),))
    drawn = [_SimWorld("bimodal", {}).draw(rollout_seed(0, row["prompt_id"], name, i), state)[1] for i in range(200)]
    assert row["states"][1] == np.float32(drawn).astype(float).tolist()


def test_sigterm_ends_a_run_in_one_line_with_143_and_the_rerun_resumes(tmp_path):
    argv = ["run", f"output_dir={tmp_path}", *RUN]
    results = tmp_path / "results.jsonl"
    code, err = stop_when(slg(*argv), lambda: results.exists() and len(results.read_text().splitlines()) >= 3, signal.SIGTERM)
    assert_terminated_in_one_line(code, err)
    kept = len(results.read_text().splitlines())
    assert 3 <= kept < 32 and not (tmp_path / "summary.json").exists()
    rerun = subprocess.run([sys.executable, "-m", "pipeline.run", *argv], env=own_ray_env(), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{kept} already done" in rerun.stderr
    assert "Token authentication" not in rerun.stderr  # Ray's notice on an instance that is the run's own
    undisturbed = run_in_process(RUN)  # results do not depend on Ray, replicas or timing
    check_rows_independently(undisturbed, load_run_config(None, RUN).seed)  # a bug both runs share passes the comparison
    done = [json.loads(line) for line in results.read_text().splitlines()]
    fields = ("prompt_id", "method", "budget", "best_reward", "selected", "rollouts", "tokens_generated", "num_states")
    assert sorted(tuple(r[f] for f in fields) for r in done) == sorted(tuple(r[f] for f in fields) for r in undisturbed)
    assert all(r["rollouts"] == r["budget"] for r in done)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["methods"] == summarise(undisturbed, DEFAULT_METHODS, [32, 64])["methods"]


def test_equal_token_replay_on_ray_starts_one_instance_for_its_pilots_and_its_replay(tmp_path, monkeypatch, capsys):
    """Before any test of this module starts its own Ray (local_ray): the pilot rounds and the replay
    of `--equal-tokens --workers 2` run on one instance, started once and gone at the end."""
    import ray

    from pipeline.distributed import session

    assert not ray.is_initialized()
    starts = []
    real_start = session.start_ray
    monkeypatch.setattr(session, "start_ray", lambda *a, **k: starts.append(real_start(*a, **k)) or starts[-1])
    assert main(["replay", "--world", "gaussian", "--prompts", "4", "--repeats", "2", "--budgets", "16",
                 "--methods", "bon,slg", "--equal-tokens", "--workers", "2", "--no-progress"]) == 0
    assert starts.count(True) == 1 and len(starts) >= 3  # started once, joined by the two pilots and the replay
    assert not ray.is_initialized()


def test_collect_shards_load_with_ray_data_and_replay_as_ray_tasks_equals_replay_here(local_ray, tmp_path, monkeypatch):
    from pipeline.offline import bank_reader

    sizes = ["collect.num_states=3", "collect.completions_per_state=20", "data.num_prompts=5", "collect.prompts_per_shard=2",
             "generator.sim.family=bimodal", f"output_dir={tmp_path}"]
    assert main(["collect", *sizes]) == 0  # the default bank: OUTPUT_DIR/bank, a folder of shards
    assert shards(tmp_path / "bank") == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    dataset = local_ray.data.read_parquet(str(tmp_path / "bank"))
    assert dataset.count() == 15 and sorted({row["prompt_id"] for row in dataset.take_all()}) == [f"sim{i}" for i in range(5)]
    assert all(len(row["rewards"]) == 20 for row in dataset.take_all())
    monkeypatch.setattr(bank_reader, "CHUNK_REWARDS", 100)  # chunks of one or two prompts, spread over the tasks
    here = replay_job({"b": StreamedBank(tmp_path / "bank")}, ["bon", "slg", "oracle"], [16, 64], 6, seed=2, workers=1,
                      with_ceilings=True)
    on_ray = replay_job({"b": StreamedBank(tmp_path / "bank")}, ["bon", "slg", "oracle"], [16, 64], 6, seed=2, workers=2,
                        with_ceilings=True)
    assert on_ray == here  # every field of every result and ceiling, to the last digit
    from pipeline.distributed import session

    monkeypatch.setattr(session, "is_single_node", lambda: False)  # as on a cluster: chunks go through the object store
    assert replay_job({"b": StreamedBank(tmp_path / "bank")}, ["bon", "slg", "oracle"], [16, 64], 6, seed=2, workers=2,
                      with_ceilings=True) == here
    assert all(r.rollouts_mean == r.budget for r in on_ray.results["b"])
    bon = next(r for r in on_ray.results["b"] if (r.method, r.budget) == ("bon", 16))
    exact = np.mean([p.bon_value(16) for p in read_bank(tmp_path / "bank")])  # BoN's exact value on the bank
    assert abs(bon.mean_best_reward - exact) < 4 * bon.ci95


def test_replay_of_a_world_and_a_jsonl_bank_as_ray_tasks_equals_replay_here(local_ray, tmp_path):
    world = make_world("heavy")
    here = replay(world, ["bon", "slg", "slg_adaptive", "oracle"], [16, 100], repeats=4, num_prompts=30, seed=5, workers=1)
    on_ray = replay(world, ["bon", "slg", "slg_adaptive", "oracle"], [16, 100], repeats=4, num_prompts=30, seed=5, workers=2)
    assert [asdict(r) for r in on_ray] == [asdict(r) for r in here]
    write_bank(tmp_path / "b.jsonl", simulate_bank(make_world("discrete"), 4, 5, 30, seed=1))
    banks = [replay(StreamedBank(tmp_path / "b.jsonl"), ["bon", "slg"], [8, 200], repeats=3, workers=w) for w in (1, 2)]
    assert [asdict(r) for r in banks[1]] == [asdict(r) for r in banks[0]]
    assert [r.pool_exceeded for r in banks[0]] == [False, False, True, True]  # 200 draws of 5 x 30 rewards
