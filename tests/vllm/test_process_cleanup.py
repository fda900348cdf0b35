"""No process of a run outlives it: `kill -9` of a vLLM replica actor ends its engine processes, and
`kill -9` of the `slg run` entrypoint (which started Ray in-process) ends Ray and every engine, each
within 60 s. Ray's per-node agents would wait a hard-coded 60 s before they exit (they report the
raylet's loss to a GCS that is gone); the run's watcher (`pipeline.distributed.reaper`) ends them sooner. Real
CPU vLLM engines on tiny models; every process the run starts carries a marker in its environment,
so what is left can be found whatever its parent."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import command_line, marked_processes, process_marker, require, wait_until_gone

require("vllm")
pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_killed_replica_and_killed_entrypoint_leave_no_process(tmp_path):
    from pipeline.toy.tiny import make_tiny_models

    models = make_tiny_models(tmp_path / "models")
    marker, env = process_marker()
    env.pop("RAY_ADDRESS", None)
    output = tmp_path / "run"
    run = subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", "run", "--config", "configs/tiny_cpu.yaml", f"output_dir={output}",
         f"generator.model={models['generator']}", f"reward.model={models['reward']}", "budgets=[64]",
         "data.num_prompts=8", "plot=false"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while not (output / "results.jsonl").exists() or not (output / "results.jsonl").read_text():
            assert run.poll() is None, "the run ended before the test could kill anything"
            assert time.time() < deadline
            time.sleep(1)
        (replica,) = [p for p in marked_processes(marker) if "VLLMGenerator" in command_line(p)]
        engine = [p for p in children(replica)]
        assert engine, "the generator replica has no engine process"
        os.kill(replica, signal.SIGKILL)
        deadline = time.time() + 60
        while any(command_line(p) for p in engine) and time.time() < deadline:
            time.sleep(1)
        assert not [p for p in engine if command_line(p)], "the killed replica's engine processes are still running"
        assert run.poll() is None  # Ray restarts the replica; the run goes on
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        left = wait_until_gone(marker, 60)
        assert not left, f"still running 60 s after kill -9 of the entrypoint: {[command_line(p)[:60] for p in left]}"
        assert all(json.loads(line)["rollouts"] == 64 for line in (output / "results.jsonl").read_text().splitlines())
    finally:
        if run.poll() is None:
            run.kill()
        for pid in marked_processes(marker):  # only this test's processes, by id
            os.kill(pid, signal.SIGKILL)
