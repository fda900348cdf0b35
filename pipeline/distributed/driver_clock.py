"""What the driver's own work costs: the wall and CPU time of its steps, and the parts of that CPU
spent in the search policies and in the replica calls (``slg bench`` reports them per rollout)."""

from __future__ import annotations

import time


class Timer:
    """Seconds of ``clock`` spent inside its ``with`` blocks, added up (blocks of one timer do not nest)."""

    __slots__ = ("clock", "seconds", "_from")

    def __init__(self, clock):
        self.clock, self.seconds, self._from = clock, 0.0, 0.0

    def __enter__(self) -> None:
        self._from = self.clock()

    def __exit__(self, *exc_info) -> None:
        self.seconds += self.clock() - self._from


class DriverClock:
    """The driver's timers. ``busy``: wall time of its work between waits (longer where engines share
    its cores). ``cpu``: its thread's CPU time over whole steps (a blocked wait uses none; decoding
    answers counts). Two parts of that CPU: ``policy``, the search policies' own work (starting a
    search, and from a round's results planning the next), and ``calls``, the replica calls' (packing
    and sending batches, waiting, unpacking answers). The rest is bookkeeping: routing, tickets,
    recording rollouts and scores."""

    def __init__(self):
        self.busy = Timer(time.perf_counter)
        self.cpu, self.policy, self.calls = Timer(time.thread_time), Timer(time.thread_time), Timer(time.thread_time)

    def report(self) -> dict:
        return {"driver_busy_s": self.busy.seconds, "driver_cpu_s": self.cpu.seconds,
                "driver_policy_cpu_s": self.policy.seconds, "driver_calls_cpu_s": self.calls.seconds}
