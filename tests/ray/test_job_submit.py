"""`ray job submit` end to end: a head this test owns on free ports, the CLI submitted with
--working-dir, SUCCEEDED, outputs checked, the head stopped through its process group and nothing
of it left running. No in-process Ray in this module."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import process_marker, wait_until_gone

from pipeline.cli import main
from pipeline.search.methods import DEFAULT_METHODS

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ray_address_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    started = time.perf_counter()
    assert main(["run", f"output_dir={tmp_path}", "data.num_prompts=1", "budgets=[8]"]) == 2
    assert "cannot reach a Ray cluster at '127.0.0.1:1'" in capsys.readouterr().err
    assert time.perf_counter() - started < 30


@pytest.fixture
def ray_head():
    """A head this test owns: `ray start --head --block` in its own process group, ended through that
    group, and checked to leave nothing behind (never the `ray` CLI's stop command: it ends every Ray on the machine).
    A head that exits while starting (a free port taken by another process in between, on a shared
    machine) is started again on new ports, up to ``HEAD_STARTS`` times; its output says why."""
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    marker, env = process_marker()
    env["RAY_AUTH_MODE"] = "token"
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    heads = []
    try:
        for start in range(HEAD_STARTS):
            ports = {name: free_port() for name in ("port", "dashboard-port", "ray-client-server-port",
                                                    "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                    "metrics-export-port", "runtime-env-agent-port")}
            command = [ray_bin, "start", "--head", "--block", "--num-cpus=2", "--include-dashboard=true",
                       "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}"]
            command += [f"--{name}={port}" for name, port in ports.items()]
            output = Path(temp_dir) / f"head-{start}.log"
            with output.open("w") as log:
                heads.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
            deadline = time.time() + 180
            while not _listening(ports["dashboard-port"]) and heads[-1].poll() is None:
                assert time.time() < deadline, "the head's dashboard did not come up in 180 s"
                time.sleep(1)
            if heads[-1].poll() is None:
                break
        assert heads[-1].poll() is None, "ray start --head exited: " + output.read_text()[-2000:]
        yield f"http://127.0.0.1:{ports['dashboard-port']}", env, ray_bin, f"127.0.0.1:{ports['port']}"
    finally:
        # SIGKILL, not SIGTERM: `ray start --block` stops its processes one by one with grace periods
        # (about 30 s); the group (a crash, for Ray) ends at once, and what Ray started outside the
        # group ends with the raylet and GCS it belongs to (checked below: nothing may be left).
        for head in heads:
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except ProcessLookupError:  # a start that exited, its group with it
                pass
            head.wait(timeout=60)
        left = wait_until_gone(marker, 60)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the test's head still running: {left}"


HEAD_STARTS = 3


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_ray_job_submit_runs_the_cli_from_a_working_dir_upload(ray_head, tmp_path):
    address, env, ray_bin, gcs = ray_head
    output = tmp_path / "job-output"
    runtime_env = {"excludes": [".venv", "outputs", ".git"]}
    submitted = subprocess.run(
        [ray_bin, "job", "submit", f"--address={address}", f"--working-dir={ROOT}",
         f"--runtime-env-json={json.dumps(runtime_env)}", "--",
         sys.executable, "-m", "pipeline.run", "run", f"output_dir={output}", "data.num_prompts=2",
         "budgets=[16,32]", "generator.num_replicas=2"],
        env=env, capture_output=True, text=True, timeout=400)
    logs = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, logs[-3000:]
    assert "succeeded" in logs.lower(), logs[-3000:]
    assert f"searches {2 * len(DEFAULT_METHODS) * 2}/{2 * len(DEFAULT_METHODS) * 2}" in logs  # progress is readable in `ray job logs -f`
    results = [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]
    assert len(results) == 2 * len(DEFAULT_METHODS) * 2
    assert json.loads((output / "summary.json").read_text())["methods"]["slg"]["32"]["prompts"] == 2


def test_a_run_on_a_cluster_it_joined_waits_for_gpus_the_autoscaler_may_add(ray_head, tmp_path):
    """A cluster joined by address may grow (`ray up` with min_workers 0 starts with its head alone,
    no GPU): a run needing GPUs it lacks waits for the autoscaler; an instance of its own refuses it."""
    _, env, _, gcs = ray_head
    waiting = subprocess.Popen([sys.executable, "-m", "pipeline.run", "run", f"output_dir={tmp_path / 'gpu'}",
                                "data.num_prompts=1", "budgets=[8]", "generator.num_gpus_per_replica=1"],
                               env={**env, "RAY_ADDRESS": gcs}, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = []
        for line in waiting.stderr:  # ends when the process does: a refusal would end it at once
            lines.append(line)
            if "waiting for the autoscaler" in line:
                break
        assert "the run needs 1 GPUs, the cluster has 0: waiting for the autoscaler" in "".join(lines), lines
    finally:
        os.killpg(waiting.pid, signal.SIGKILL)
        waiting.wait(timeout=60)


def test_a_refused_overwrite_keeps_the_run_it_would_have_replaced(tmp_path, capsys, monkeypatch):
    """``overwrite=true`` starts over only once Ray and the replicas are there: a run refused on its
    cluster leaves every file of the run before it as it was."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = {"results.jsonl": '{"prompt_id": "p", "method": "bon", "budget": 8}\n', "config.yaml": "seed: 0\n",
              "summary.json": "{}\n", "best_reward_vs_budget.png": "png"}
    for name, text in before.items():
        (tmp_path / name).write_text(text)
    code = main(["run", f"output_dir={tmp_path}", "overwrite=true", "data.num_prompts=1", "budgets=[8]", "ray.address=127.0.0.1:1"])
    assert code == 2
    assert "cannot reach a Ray cluster at '127.0.0.1:1'" in capsys.readouterr().err
    assert {name: (tmp_path / name).read_text() for name in before} == before
