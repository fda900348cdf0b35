"""Whether each replica of a role may take work: failures in a row, rest, a probe before rejoining, retirement.

A replica that fails (its process died, it hung, Ray is restarting it) rests a while, longer after
each failure in a row, and then gets a probe: an empty call that Ray delivers once the replica is
alive again (restarted in place, or placed on another node or on a node that came back). It takes
work again only when the probe is answered, so no work waits on a replica that is not there. A
replica that fails ``max_failures`` times in a row, or whose probe is not answered within
``recovery_timeout_s`` (its node is gone and nothing can host it), is retired, logged once: the
role goes on with the others. Only a role with no replica left stops the run.
"""

from __future__ import annotations

import logging
import time
from enum import Enum

from pipeline.distributed.calls import CallFailure

log = logging.getLogger("slg")


PROBE_RESEND_S = 10.0  # a probe unanswered this long is sent again (Ray can lose a call sent while it restarts a replica)


class NoReplicaLeftError(RuntimeError):
    """Every replica of a role is retired: the run cannot go on."""


class Status(str, Enum):
    active = "active"      # takes work
    resting = "resting"    # failed; waits before it is probed
    probing = "probing"    # a probe is out: it takes work once the probe is answered
    retired = "retired"    # failed too often, or never came back: no more work, ever


class ReplicaHealth:
    def __init__(self, name: str, count: int, retry_s: float, max_failures: int, recovery_timeout_s: float):
        self.name, self.retry_s, self.max_failures = name, retry_s, max_failures
        self.recovery_timeout_s = recovery_timeout_s
        self.status = [Status.active] * count
        self.failures_in_row = [0] * count
        self.resting_until = [0.0] * count
        self.probe_sent_at = [0.0] * count
        self.probing_since = [0.0] * count
        self.failed_at = [-float("inf")] * count  # when the last counted failure happened
        self.last_error = [""] * count
        self.failures_total = 0
        self.lost = 0          # replica processes lost (crashed, killed, or their node lost): Ray restarts them
        self.rejoined = 0      # replicas that answered a probe and took work again

    def takes_work(self, replica: int) -> bool:
        return self.status[replica] == Status.active

    def due_for_probe(self, replica: int, now: float) -> bool:
        return self.status[replica] == Status.resting and self.resting_until[replica] <= now

    def probe_sent(self, replica: int) -> None:
        now = time.perf_counter()
        if self.status[replica] != Status.probing:
            self.probing_since[replica] = now
        self.status[replica] = Status.probing
        self.probe_sent_at[replica] = now

    def probe_stale(self, replica: int, now: float) -> bool:
        return self.status[replica] == Status.probing and now - self.probe_sent_at[replica] > PROBE_RESEND_S

    def probe_answered(self, replica: int) -> None:
        if self.status[replica] == Status.probing:
            self.status[replica] = Status.active
            self.rejoined += 1

    def call_answered(self, replica: int) -> None:
        if self.status[replica] == Status.active:
            self.failures_in_row[replica] = 0

    def call_failed(self, replica: int, failure: CallFailure, reason: str, call_started: float) -> None:
        """Count a failure once per incident, rest the replica, and retire it after ``max_failures`` in
        a row. Calls sent before the replica's last counted failure fail with it (the same incident);
        while Ray restarts a replica, a probe fails as "restarting" (still the same incident)."""
        if self.status[replica] == Status.retired or call_started <= self.failed_at[replica]:
            return
        if failure == CallFailure.restarting and self.status[replica] != Status.active:
            self.status[replica] = Status.resting  # probe again after a rest
            self.resting_until[replica] = time.perf_counter() + self.retry_s
            return
        self.failures_total += 1
        self.failures_in_row[replica] += 1
        # a working replica whose process is gone; a probe that finds it still gone is not another loss
        self.lost += failure in (CallFailure.died, CallFailure.restarting) and self.status[replica] == Status.active
        self.failed_at[replica] = time.perf_counter()
        self.last_error[replica] = reason
        if self.failures_in_row[replica] >= self.max_failures:
            self.retire(replica, f"failed {self.failures_in_row[replica]} times in a row; last: {reason}")
            return
        self.status[replica] = Status.resting
        self.resting_until[replica] = time.perf_counter() + self.retry_s * max(1, self.failures_in_row[replica])

    def probe_overdue(self, replica: int, now: float) -> bool:
        return self.status[replica] == Status.probing and now - self.probing_since[replica] > self.recovery_timeout_s

    def retire(self, replica: int, reason: str) -> None:
        self.status[replica] = Status.retired
        self.last_error[replica] = reason
        log.warning("%s replica %d retired: %s", self.name, replica, reason)
        if all(status == Status.retired for status in self.status):
            details = "; ".join(f"replica {r}: {error}" for r, error in enumerate(self.last_error))
            raise NoReplicaLeftError(f"every {self.name} replica is lost ({details})")

    @property
    def retired(self) -> int:
        return sum(status == Status.retired for status in self.status)
