"""SIGTERM as an exception in the main thread: a preempted job ends as an interrupted one does.

Kubernetes and spot preemption send SIGTERM. ``slg`` runs inside :func:`sigterm_raises`;
``ray.init`` then installs a C++ handler of its own, which prints a stack dump and exits with code
15 before any ``finally`` block could upload what finished, so :func:`take_back_sigterm` (called
right after ``ray.init``) puts the Python handler back. The handler raises :class:`Terminated` in
the main thread wherever it is (inside a ``ray.get`` too: Ray checks for signals while it waits),
so the job unwinds: results already written stay, staged files are uploaded, Ray is shut down, and
``slg`` prints one line and exits with 143 (128 + SIGTERM, as a shell reports a terminated process).
"""

from __future__ import annotations

import contextlib
import signal
import threading

_installed = False
_received = False


class Terminated(BaseException):
    """The process got SIGTERM. A ``BaseException``, as ``KeyboardInterrupt``: no ``except Exception`` swallows it."""


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


def take_back_sigterm() -> None:
    """After ``ray.init``: SIGTERM to the Python handler again, within ``sigterm_raises``."""
    if _installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def received() -> bool:
    """Whether SIGTERM came (an error raised while the job unwinds from it is part of the termination)."""
    return _received


def _raise_terminated(signum, frame) -> None:
    global _received
    if _received:  # once: a second SIGTERM must not interrupt the cleanup of the first
        return
    _received = True
    raise Terminated()
