"""Refusing, before the work, what would not fit in the memory the system reports free: one line
(``ConfigError``, exit 2) rather than a MemoryError, or the system's OOM killer, minutes later. The
commands that hold data whose size their options set (``slg sim-bank``, ``slg curves``) say how
many bytes they need; this compares."""

from __future__ import annotations

from pipeline.errors import ConfigError


def check_free_memory(need: float, what: str, remedy: str = "") -> None:
    """``ConfigError`` "WHAT need about X GiB of memory, Y GiB are free here (REMEDY)" where ``need``
    bytes exceed the memory available now."""
    import psutil

    available = psutil.virtual_memory().available
    if need > available:
        raise ConfigError(f"{what} need about {need / 2**30:,.1f} GiB of memory, {available / 2**30:,.1f} GiB are free here"
                          + (f" ({remedy})" if remedy else ""))
