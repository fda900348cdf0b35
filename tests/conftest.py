"""Shared fixtures and helpers. Ray instances are module-scoped so that a module that starts its own
cluster (the job-submission head, the multi-node cluster) never meets another one. Tests start and
stop only their own processes, by id (the `ray` CLI's stop command ends every Ray instance on the machine)."""

import os
import time
import uuid

import pytest


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, logging_level="WARNING")  # logical GPUs
    yield ray
    ray.shutdown()


def process_marker() -> tuple[str, dict]:
    """A unique environment variable for the processes a test starts: every descendant (Ray's
    head, raylet, workers, vLLM engine processes) inherits it, so they can be found afterwards."""
    marker = uuid.uuid4().hex
    return marker, {**os.environ, "SLG_TEST_PROCESS_MARKER": marker}


def marked_processes(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (zombies and this test process excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if marker.encode() in environ.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def wait_until_gone(marker: str, timeout_s: float) -> list[int]:
    """Wait up to ``timeout_s`` for every marked process to end; those still alive."""
    deadline = time.time() + timeout_s
    while (left := marked_processes(marker)) and time.time() < deadline:
        time.sleep(1)
    return left
