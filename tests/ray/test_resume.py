"""Runs that start their own local Ray instances: kill the whole `slg run` process mid-run and
resume it; benchmark scaling across replica counts. This module holds no shared in-process Ray."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import check_rows_independently, run_in_process

from pipeline.jobs.config import load_run_config
from pipeline.search.methods import DEFAULT_METHODS

pytestmark = pytest.mark.ray
SLOW = ["data.num_prompts=4", "budgets=[32,64]", "plot=false", "driver.max_concurrent_prompts=2",
        "driver.max_batch_rollouts=8", "generator.sim.latency_per_token_s=0.0001"]


def slg_run(output, *extra):
    return [sys.executable, "-m", "pipeline.run", "run", f"output_dir={output}", *SLOW, *extra]


def comparable(rows):
    fields = ("best_reward", "selected", "rollouts", "tokens_generated", "num_states")
    return sorted(((r["prompt_id"], r["method"], r["budget"]), tuple(r[f] for f in fields)) for r in rows)


def results(path):
    return [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    from pipeline.jobs.report import summarise

    # Without RAY_AUTH_MODE, which an earlier ray.init in this process sets: only a run left to
    # choose its own mode meets Ray's token-authentication notice (that it must not print).
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    undisturbed = run_in_process(SLOW)  # results do not depend on Ray, replicas or timing
    check_rows_independently(undisturbed, load_run_config(None, SLOW).seed)  # a bug both runs share passes the comparison

    killed = tmp_path / "killed"
    process = subprocess.Popen(slg_run(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    written = killed / "results.jsonl"
    deadline = time.time() + 240
    while not (written.exists() and len(written.read_text().splitlines()) >= 4):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the driver process and everything in its session
    process.wait(timeout=30)
    done_before = len(written.read_text().splitlines())
    assert done_before < 4 * len(DEFAULT_METHODS) * 2, "the run finished before the kill"
    assert not (killed / "summary.json").exists()

    rerun = subprocess.run(slg_run(killed), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{done_before} already done" in rerun.stderr
    assert "Token authentication" not in rerun.stderr  # Ray's notice on an instance that is the run's own
    assert comparable(results(killed)) == comparable(undisturbed)  # nothing lost, nothing twice
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["methods"] == summarise(undisturbed, DEFAULT_METHODS, [32, 64])["methods"]


def test_bench_scaling_runs_each_replica_count_on_logical_gpus():
    from pipeline.jobs.benchmark import bench_scaling

    config = load_run_config(None, ["methods=[bon]", "budgets=[16]"])
    rows = bench_scaling(config, 2, "bon", 16, [1, 2])
    assert [(r["replicas"], r["prompts"]) for r in rows] == [(1, 2), (2, 4)]  # the same load per replica
    # efficiency(k) = throughput(k) / (k x throughput(1)): weak scaling against one replica
    assert rows[1]["scaling_efficiency"] == pytest.approx(rows[1]["rollouts_per_s"] / (2 * rows[0]["rollouts_per_s"]))
