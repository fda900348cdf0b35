"""`ray job submit` end to end: a local head on free ports, the CLI submitted with --working-dir,
SUCCEEDED, outputs checked, head stopped. No in-process Ray in this module (``ray stop`` would end it)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.cli import main

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]


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
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    ports = {name: free_port() for name in ("port", "dashboard-port", "ray-client-server-port",
                                            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                            "metrics-export-port", "runtime-env-agent-port")}
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    command = [ray_bin, "start", "--head", "--num-cpus=2", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}"]
    command += [f"--{name}={port}" for name, port in ports.items()]
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield f"http://127.0.0.1:{ports['dashboard-port']}", env, ray_bin
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_cli_from_a_working_dir_upload(ray_head, tmp_path):
    address, env, ray_bin = ray_head
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
    assert "searches 16/16" in logs  # progress is readable in `ray job logs -f`
    results = [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]
    assert len(results) == 2 * 4 * 2
    assert json.loads((output / "summary.json").read_text())["methods"]["slg"]["32"]["prompts"] == 2
