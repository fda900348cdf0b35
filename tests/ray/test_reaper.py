"""The watcher that ends what is left of a local Ray instance (``pipeline.distributed.reaper``), on plain
processes standing in for the instance: a "raylet" with a child that ignores its parent's death
(as Ray's agents do for 60 s), and a bystander the entrypoint also started."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from pipeline.distributed.reaper import GRACE_S

ROOT = Path(__file__).resolve().parents[2]

# The entrypoint: starts an instance (a process with a child) and a bystander, then the watcher
# over the instance only, prints the pids, and waits to be killed (or closes the pipe when told).
ENTRYPOINT = textwrap.dedent("""
    import json, subprocess, sys, time
    import psutil
    from pipeline.distributed.reaper import child_processes, close_reaper, start_reaper
    before = child_processes()
    instance = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"])
    roots = child_processes() - before
    while not psutil.Process(instance.pid).children():  # the instance is up (as when ray.init returns)
        time.sleep(0.05)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    reaper = start_reaper(roots)  # returns once the watcher has noted the instance's tree
    (child,) = psutil.Process(instance.pid).children()
    print(json.dumps({"instance": instance.pid, "instance_child": child.pid, "bystander": bystander.pid,
                      "reaper": reaper.pid}), flush=True)
    if sys.argv[1] == "shutdown":
        instance.terminate()  # a shutdown that ends the instance's root but leaves its child
        close_reaper(reaper)
    time.sleep(300)
""")


def start_entrypoint(mode: str):
    process = subprocess.Popen([sys.executable, "-c", ENTRYPOINT, mode], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return process, json.loads(process.stdout.readline())


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # a zombie has ended; its parent did not reap it
    except psutil.NoSuchProcess:
        return False


def gone_within(pids: list[int], timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.2)
    return False


def test_kill_9_of_the_entrypoint_ends_the_instance_tree_and_nothing_else():
    entrypoint, pids = start_entrypoint("wait")
    try:
        os.kill(entrypoint.pid, signal.SIGKILL)
        entrypoint.wait()
        # the instance's root and its child ignore the entrypoint's death: only the watcher ends them
        assert gone_within([pids["instance"], pids["instance_child"], pids["reaper"]], GRACE_S + 15)
        assert psutil.Process(pids["bystander"]).is_running()  # never seen under the instance: untouched
    finally:
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_shutdown_that_leaves_a_process_behind_is_finished_by_the_watcher():
    entrypoint, pids = start_entrypoint("shutdown")
    try:
        assert gone_within([pids["instance_child"], pids["reaper"]], GRACE_S + 15)
        assert entrypoint.poll() is None and psutil.Process(pids["bystander"]).is_running()
    finally:
        entrypoint.kill()
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
