"""SIGTERM as an exception in the main thread: a preempted job ends as an interrupted one does.

Kubernetes and spot preemption send SIGTERM. ``slg`` runs inside :func:`sigterm_raises`: the
handler raises :class:`Terminated` in the main thread wherever it is (inside a ``ray.get`` too), so
the job unwinds: results already written stay, staged files are uploaded, Ray is shut down, and
``slg`` prints one line and exits with 143 (128 + SIGTERM, as a shell reports a terminated process).

``ray.init`` installs handlers of its own: Python ones that exit with 15 or drain the node for up
to 30 s, and the core worker's C++ one, which prints a stack dump and aborts. So every ``ray.init``
runs inside :func:`ray_starting`, which puts the Python handler back afterwards and turns a
SIGTERM during the start into the same line and code. One window is left: from the moment Ray's
core worker installs its C++ handler to the return of ``ray.init`` (the last part of the start), a
SIGTERM still meets that handler.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading

MESSAGE = "slg: terminated (SIGTERM); rerun the same command to resume"
EXIT_CODE = 143       # 128 + SIGTERM
RAY_START_GRACE_S = 5.0  # a ray.init stuck after SIGTERM (its GCS got the signal too) is left this long, then the process exits

_installed = False
_received = False


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM. A ``KeyboardInterrupt``: no ``except Exception`` swallows it, and a
    ``ray.get`` that is waiting gives up on it (Ray's wait checks for signals but passes on only
    ``KeyboardInterrupt``, as a plain one: :func:`received` says which it was)."""


@contextlib.contextmanager
def sigterm_raises():
    """Within this block, SIGTERM raises :class:`Terminated` in the main thread (also after ``ray.init``);
    the handler before it comes back at the end (``slg``'s ``main`` called in a test process)."""
    global _installed, _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    _installed, _received = True, False
    try:
        yield
    finally:
        _installed = False
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def ray_starting():
    """Around ``ray.init``, within ``sigterm_raises``: SIGTERM to the Python handler again afterwards, and
    a SIGTERM that came during the start as :class:`Terminated` (Ray's own handler then raised
    ``SystemExit``). Where the signal also reached Ray's processes, ``ray.init`` can wait in C for a
    GCS that is gone, where no Python handler runs: a watcher thread, woken by the signal
    (``signal.set_wakeup_fd``), then ends the process after ``RAY_START_GRACE_S`` with the same line
    and code (nothing of the job is written before Ray is up)."""
    global _received
    if not _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    started = threading.Event()
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write)
    watcher = threading.Thread(target=_end_if_stuck, args=(read, started), daemon=True, name="slg-sigterm-watcher")
    watcher.start()
    try:
        yield
    except SystemExit:
        import ray

        _received = True
        ray.shutdown()
        raise Terminated() from None
    finally:
        started.set()
        signal.set_wakeup_fd(previous)
        signal.signal(signal.SIGTERM, _raise_terminated)
        watcher.join()
        os.close(read)
        os.close(write)


def _end_if_stuck(read: int, started: threading.Event) -> None:
    while not started.is_set():
        ready, _, _ = select.select([read], [], [], 0.2)
        if ready and signal.SIGTERM in os.read(read, 64):
            if not started.wait(RAY_START_GRACE_S):
                print(MESSAGE, file=sys.stderr, flush=True)
                os._exit(EXIT_CODE)
            return


def received() -> bool:
    """Whether SIGTERM came (an error raised while the job unwinds from it is part of the termination)."""
    return _received


def _raise_terminated(signum, frame) -> None:
    global _received
    if _received:  # once: a second SIGTERM must not interrupt the cleanup of the first
        return
    _received = True
    raise Terminated()
