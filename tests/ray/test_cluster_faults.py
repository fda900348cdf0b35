"""Faults of a multi-node cluster, simulated on one machine with ``ray.cluster_utils.Cluster``: a head
(no GPU) and two worker nodes with one logical GPU each, so the generator replicas (one GPU each)
live on the workers and the driver on the head. A worker node removed mid-run or mid-collect
changes no result; every generator replica killed, or the driver killed, ends in one line and
exit code 1, and the same command then resumes. The cluster is this module's own, and nothing of
it may be left running afterwards."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
from conftest import command_line, marked_processes, process_marker, run_in_process, wait_until_gone

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
RUN = ["data.num_prompts=3", "budgets=[32,64]", "plot=false", "generator.num_replicas=2",
       "generator.num_gpus_per_replica=1", "generator.sim.latency_per_token_s=0.0004", "driver.max_batch_rollouts=8",
       "driver.max_concurrent_prompts=4", "driver.replica_retry_s=0.5", "storage.checkpoint_interval_s=0"]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    marker, env = process_marker()
    saved = dict(os.environ)
    os.environ.update(env)  # every node the module starts (also those added later) inherits the marker
    try:
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
        workers = [nodes.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        nodes.wait_for_nodes()
        yield nodes, workers, {**env, "RAY_ADDRESS": nodes.address}
        nodes.shutdown()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    # Cluster.shutdown ends its nodes' processes. With two copies of the suite on two cores, three
    # of them once outlived even 120 s (never alone): they are this module's own (marked), so after
    # 60 s they are ended by id, and none may survive that.
    left = wait_until_gone(marker, 60)
    if left:  # shown in the warnings summary, to tell which of Ray's processes linger
        warnings.warn(f"test cluster processes ended by id after 60 s: {[command_line(pid)[:120] for pid in left]}", stacklevel=1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not wait_until_gone(marker, 30), "processes of the test cluster still running"


def slg(env, *args, **popen):
    return subprocess.Popen([sys.executable, "-m", "pipeline.run", *args], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def finish(process, timeout=400):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


def wait_for_lines(process, path, count):
    deadline = time.time() + 300
    while len(lines(path)) < count:
        assert process.poll() is None, f"the job ended first: {process.stderr.read()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.1)


def comparable(path):
    rows = [json.loads(line) for line in lines(path)]
    fields = ("best_reward", "selected", "rollouts", "tokens_generated", "num_states")
    return sorted(((r["prompt_id"], r["method"], r["budget"]), tuple(r[f] for f in fields)) for r in rows)


@pytest.fixture(scope="module")
def reference():
    rows = run_in_process(RUN)
    fields = ("best_reward", "selected", "rollouts", "tokens_generated", "num_states")
    return sorted(((r["prompt_id"], r["method"], r["budget"]), tuple(r[f] for f in fields)) for r in rows)


def lose_a_worker_node(cluster, process, path, after_lines):
    """Remove a worker node (its raylet killed, as a crash) once ``path`` has ``after_lines`` lines,
    then add a new one, as an autoscaler would."""
    nodes, workers, _ = cluster
    wait_for_lines(process, path, after_lines)
    lost = workers.pop(0)
    nodes.remove_node(lost, allow_graceful=False)
    time.sleep(2)
    for attempt in range(2):  # on a loaded machine a raylet can miss Ray's start-up deadline once
        try:
            workers.append(nodes.add_node(num_cpus=1, num_gpus=1))
            break
        except Exception:
            if attempt:
                raise


def test_a_worker_node_lost_mid_run_changes_no_result(cluster, reference, tmp_path):
    env = cluster[2]
    run = slg(env, "run", f"output_dir={tmp_path}", *RUN)
    lose_a_worker_node(cluster, run, tmp_path / "results.jsonl", 2)
    code, out, err = finish(run)
    assert code == 0, err[-3000:]
    assert comparable(tmp_path / "results.jsonl") == reference  # same results, every rollout counted once
    assert all(row[1][2] == row[0][2] for row in reference)  # rollouts == budget
    throughput = json.loads((tmp_path / "summary.json").read_text())["throughput"]
    assert throughput["replicas_lost"] >= 1  # the summary says what was lost
    assert throughput["replicas_rejoined"] >= 1  # and that the lost replica was placed again (on the new node)
    # the log says it too (the count: the replicas placed on that node, a reward replica among them or not)
    assert f"replicas: {throughput['replicas_lost']} lost" in err


def test_a_worker_node_lost_mid_collect_changes_no_bank_line(cluster, tmp_path):
    from pipeline.jobs.collection import SampleRecorder, bank_row

    env = cluster[2]
    sizes = ["collect.num_states=3", "collect.completions_per_state=12", "data.num_prompts=4"]
    collect = slg(env, "collect", "--out", str(tmp_path / "bank.jsonl"), *sizes, *RUN[3:])
    lose_a_worker_node(cluster, collect, tmp_path / "bank.jsonl", 1)
    code, _, err = finish(collect)
    assert code == 0, err[-3000:]
    expected = {r["prompt_id"]: bank_row(r, {})["states"] for r in run_in_process(sizes + RUN[3:], SampleRecorder(False), True)}
    assert {row["prompt_id"]: row["states"] for row in map(json.loads, lines(tmp_path / "bank.jsonl"))} == expected


def kill_processes(env, name: str) -> list[int]:
    """kill -9 of every process of the test cluster running ``name`` (an actor's class)."""
    marker = env["SLG_TEST_PROCESS_MARKER"]
    victims = [pid for pid in marked_processes(marker) if name in Path(f"/proc/{pid}/cmdline").read_text()]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    return victims


def assert_one_line_error(err: str, *words: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("slg: error")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert all(word in errors[0] for word in words), errors[0]
    assert "traceback in" in errors[0]  # the traceback is in the log, and the line says where


def test_every_generator_replica_killed_ends_in_one_line_and_the_rerun_resumes(cluster, reference, tmp_path):
    env = cluster[2]
    argv = ["run", f"output_dir={tmp_path}", *RUN, "generator.max_restarts=0"]
    run = slg(env, *argv)
    wait_for_lines(run, tmp_path / "results.jsonl", 2)
    assert len(kill_processes(env, "SimGenerator")) == 2
    code, _, err = finish(run)
    assert code == 1
    assert_one_line_error(err, "every generator replica is lost")
    kept = len(lines(tmp_path / "results.jsonl"))
    code, _, err = finish(slg(env, *argv))
    assert code == 0, err[-2000:]
    assert f"{kept} already done" in err
    assert comparable(tmp_path / "results.jsonl") == reference  # nothing lost, nothing twice


def test_the_driver_killed_ends_in_one_line_and_the_rerun_resumes(cluster, reference, tmp_path):
    env = cluster[2]
    argv = ["run", f"output_dir={tmp_path}", *RUN]
    run = slg(env, *argv)
    wait_for_lines(run, tmp_path / "results.jsonl", 2)
    assert len(kill_processes(env, "ray::Driver")) == 1
    code, _, err = finish(run)
    assert code == 1
    assert_one_line_error(err, "driver")
    code, _, err = finish(slg(env, *argv))
    assert code == 0, err[-2000:]
    assert comparable(tmp_path / "results.jsonl") == reference


def test_a_run_without_an_address_starts_its_own_instance_beside_another_cluster(cluster, tmp_path):
    """`ray start` (and ray.cluster_utils) records a cluster's address in RAY_TMPDIR/ray/ray_current_cluster,
    where ray.init() without an address looks first: a run given no address must still start an
    instance of its own (joining would run the job on someone else's cluster, and here fail on the
    CPUs it asks for). The record points at this module's cluster, in a RAY_TMPDIR of the test's own
    (the machine-wide one belongs to whichever cluster started last, perhaps another test run's)."""
    system_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        os.makedirs(os.path.join(system_tmp, "ray"))
        Path(system_tmp, "ray", "ray_current_cluster").write_text(cluster[0].address)
        env = {**{k: v for k, v in cluster[2].items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": system_tmp}
        code, _, err = finish(slg(env, "run", f"output_dir={tmp_path}", "data.num_prompts=1", "methods=[bon]",
                                  "budgets=[8]", "plot=false"))
        assert code == 0, err[-2000:]
        assert len(lines(tmp_path / "results.jsonl")) == 1
    finally:
        shutil.rmtree(system_tmp, ignore_errors=True)
