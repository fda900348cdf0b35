"""Ends what is left of a local Ray instance once the process that started it is gone.

When ``slg run`` starts Ray in-process and then dies (``kill -9``, Ctrl-C, a normal exit), Ray ends
most of its processes itself, but not all at once: the raylet's two agents (DashboardAgent,
RuntimeEnvAgent) first try, for a hard-coded 60 s, to report the raylet's death to a GCS that is
already gone (``ray._private.utils.publish_error_to_driver``), and an engine process may outlive its
worker for a while. So beside a local instance the entrypoint starts this watcher: a small process
that holds the read end of a pipe from the entrypoint and, every ``POLL_S``, notes the processes of
the instance (those ``ray.init`` started, and all their descendants). When the pipe closes, the
entrypoint is gone (or has shut Ray down): the watcher gives Ray ``GRACE_S`` to end its processes,
kills the ones still alive (the very processes it noted: same pid, same start time), and exits.
It never touches a process it did not see descend from the instance.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import psutil

POLL_S = 1.0   # how often the instance's process tree is noted (workers and engines come and go)
GRACE_S = 5.0  # what Ray gets to end its processes itself before the rest are killed


def child_processes() -> set[int]:
    """The pids of this process's children now (call before and after ``ray.init`` to tell its own)."""
    return {child.pid for child in psutil.Process().children()}


def start_reaper(roots: set[int]) -> subprocess.Popen:
    """Start the watcher over the processes ``roots`` and their descendants, and return once it has
    noted them; it acts when the returned process's stdin closes (``close_reaper``, or this
    process's death). Its own session, so a Ctrl-C meant for the run does not kill it first."""
    reaper = subprocess.Popen([sys.executable, "-m", "pipeline.distributed.reaper", *map(str, sorted(roots))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, close_fds=True)
    reaper.stdout.readline()  # "noted": the instance's tree as it is now is known to the watcher
    reaper.stdout.close()
    return reaper


def close_reaper(reaper: subprocess.Popen) -> None:
    """Ray was shut down here: let the watcher end what outlives it (it exits by itself)."""
    if reaper.stdin is not None:
        reaper.stdin.close()


def watch(roots: list[int], stream=None, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> list[int]:
    """Note the tree under ``roots`` until ``stream`` (stdin) closes; then kill what is left of it
    after ``grace_s``. The pids killed."""
    stream = stream if stream is not None else sys.stdin
    seen: dict[int, psutil.Process] = {}
    _note(roots, seen)
    print("noted", flush=True)
    while True:
        _note(roots, seen)
        readable, _, _ = select.select([stream], [], [], poll_s)
        if readable and not os.read(stream.fileno(), 4096):
            break  # end of file: the entrypoint closed the pipe or died
    _note(roots, seen)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(process.is_running() for process in seen.values()):
        time.sleep(0.2)
    killed = []
    for pid, process in seen.items():
        try:
            if process.is_running():  # psutil compares the start time too: a reused pid is not ours
                process.kill()
                killed.append(pid)
        except psutil.Error:
            continue  # ended in between
    return killed


def _note(roots: list[int], seen: dict[int, psutil.Process]) -> None:
    for pid in roots:
        try:
            root = psutil.Process(pid)
            for process in (root, *root.children(recursive=True)):
                seen.setdefault(process.pid, process)
        except psutil.Error:
            continue  # that root has ended; its descendants stay noted
    for pid in [pid for pid, process in seen.items() if not process.is_running()]:
        del seen[pid]


if __name__ == "__main__":
    watch([int(pid) for pid in sys.argv[1:]])
    sys.stdout = None  # the entrypoint stopped reading: nothing may be flushed to the closed pipe at exit
