"""The replicas of one role (generators, or reward models): queues, calls in flight, health, busy time.

One object owns all bookkeeping about a role's replicas, so that the driver only puts requests in
and takes answers out (as Ray's ``ActorPool`` does). Each replica has a queue; a request is routed
to a replica when it is queued (least loaded, or cache-aware for generators: ``CacheAwareRouter``),
sent in batches of at most ``batch_size``, with at most ``max_inflight_calls`` calls per replica.
Each request in flight is owned by the call that carries it: when a call fails, its requests go back
to the queues of healthy replicas, and a late answer from the failed call is dropped, so every
request is answered exactly once. A replica that failed rests a while (longer after each failure in
a row) and gets no work meanwhile; after ``max_failures`` failures in a row the run stops.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from pipeline.calls import CallFailure

RESTING_LOAD = 10**12  # a resting replica's load: never the least loaded while another can work


class ReplicaFailedError(RuntimeError):
    """A replica kept failing (or never started): the run stops instead of retrying forever."""


class LeastLoadedRouter:
    """Every request to the replica with the least work queued and in flight."""

    def choose(self, key, loads: list[int]) -> int:
        return min(range(len(loads)), key=loads.__getitem__)  # a Python min: numpy costs more on short lists

    def forget(self, replica: int) -> None:
        pass


class CacheAwareRouter:
    """Rollouts from the prompt (key None) go to the least loaded replica. A state's (key = the
    state) go to the least loaded of the replicas whose prefix cache holds it, unless that one has
    more than ``spill`` rollouts waiting beyond the least loaded replica: then to that one, which
    holds the state from then on too (a round's rollouts of one state would otherwise pile up on one
    replica while the others run dry; SGLang's router bounds affinity the same way). ``spill = 0``
    keeps every state on one replica."""

    def __init__(self, spill: int):
        self.spill = spill
        self.holders: dict = {}  # state -> replicas whose prefix cache holds it

    def choose(self, key, loads: list[int]) -> int:
        least = min(range(len(loads)), key=loads.__getitem__)
        if key is None:
            return least
        holders = self.holders.get(key)
        if holders is None:
            self.holders[key] = [least]
            return least
        home = min(holders, key=loads.__getitem__)
        if self.spill and loads[home] - loads[least] > self.spill:
            holders.append(least)
            return least
        return home

    def forget(self, replica: int) -> None:
        """A replica lost its cache (it died): its states are cached elsewhere or nowhere."""
        self.holders = {k: kept for k, v in self.holders.items() if (kept := [r for r in v if r != replica])}


@dataclass
class _Call:
    replica: int
    batch: list  # (routing key, request) pairs
    started: float = field(default_factory=time.perf_counter)


class ReplicaPool:
    def __init__(self, name: str, replicas: list, calls, method: str, batch_size: int, max_inflight_calls: int,
                 router=None, retry_s: float = 2.0, max_failures: int = 3):
        self.name, self.replicas, self.calls, self.method = name, replicas, calls, method
        self.batch_size, self.max_inflight_calls = batch_size, max_inflight_calls
        self.router = router or LeastLoadedRouter()
        self.retry_s, self.max_failures = retry_s, max_failures
        count = len(replicas)
        self.queues: list[deque] = [deque() for _ in range(count)]
        self.inflight_calls = [0] * count
        self.inflight_items = [0] * count
        self.pending: dict = {}  # call token -> _Call
        self.owner: dict[int, object] = {}  # request id -> the token of the call carrying it
        self.failures_in_row = [0] * count
        self.failures_total = 0
        self.resting_until = [0.0] * count
        self.recovering = [False] * count  # failed and not yet answered since: Ray may be restarting it
        self.busy_s = [0.0] * count
        self.busy_since = [0.0] * count
        self.started = time.perf_counter()

    # --- queueing and sending -------------------------------------------------------------------

    def put(self, key, request) -> None:
        """Queue ``request`` (it has a ``request_id``) on the replica the router picks for ``key``."""
        replica = 0 if len(self.queues) == 1 else self.router.choose(key, self.loads())
        self.queues[replica].append((key, request))

    def loads(self) -> list[int]:
        now = time.perf_counter()  # called per request: kept lean
        return [len(q) + items + (RESTING_LOAD if rest > now else 0)
                for q, items, rest in zip(self.queues, self.inflight_items, self.resting_until)]

    def dispatch(self) -> None:
        """Send queued work to every replica that has room and is not resting."""
        now = time.perf_counter()
        for replica, queue in enumerate(self.queues):
            while queue and self.inflight_calls[replica] < self.max_inflight_calls and self.resting_until[replica] <= now:
                batch = [queue.popleft() for _ in range(min(len(queue), self.batch_size))]
                token = self.calls.submit(self.replicas[replica], self.method, [request for _, request in batch])
                self.pending[token] = _Call(replica, batch)
                for _, request in batch:
                    self.owner[request.request_id] = token
                self._call_started(replica, len(batch))

    @property
    def has_queued(self) -> bool:
        return any(self.queues)

    # --- answers and failures -------------------------------------------------------------------

    def complete(self, token, answers: list) -> list:
        """A call's answers, without those its requests no longer belong to (re-sent after a failure)."""
        call = self.pending.pop(token)
        self.failures_in_row[call.replica] = 0
        self.recovering[call.replica] = False
        self._call_ended(call.replica, len(call.batch))
        owned = []
        for answer in answers:
            if self.owner.get(answer.request_id) is token:
                del self.owner[answer.request_id]
                owned.append(answer)
        return owned

    def call_failed(self, token, failure: CallFailure, reason: str) -> None:
        """A replica's call raised. While Ray restarts a replica its calls fail as "restarting": that
        incident counts once."""
        replica = self.pending[token].replica
        self._fail(token, reason, counts=failure == CallFailure.died or not self.recovering[replica])

    def expire_hung(self, limit_s: float) -> None:
        """Calls unanswered for ``limit_s``: their replica counts as hung, is killed (Ray restarts
        it) and its work goes elsewhere."""
        now = time.perf_counter()
        for token, call in list(self.pending.items()):
            if now - call.started > limit_s:
                already_restarting = self.recovering[call.replica]
                if not already_restarting:
                    self.calls.restart(self.replicas[call.replica])
                self._fail(token, f"no answer within driver.call_timeout_s={limit_s:g}", counts=not already_restarting)

    def _fail(self, token, reason: str, counts: bool) -> None:
        """Count the failure, rest the replica a while, and re-queue its work on the others."""
        call = self.pending.pop(token)
        replica = call.replica
        if counts:
            self.failures_total += 1
            self.failures_in_row[replica] += 1
            if self.failures_in_row[replica] > self.max_failures:
                raise ReplicaFailedError(f"{self.name} replica {replica} failed {self.failures_in_row[replica]} "
                                         f"times in a row; last: {reason}")
        self.recovering[replica] = True
        self.resting_until[replica] = time.perf_counter() + self.retry_s * max(1, self.failures_in_row[replica])
        self._call_ended(replica, len(call.batch))
        stranded = [(key, r) for key, r in call.batch if self.owner.get(r.request_id) is token]
        stranded += self.queues[replica]
        self.queues[replica].clear()
        self.router.forget(replica)
        for key, request in stranded:
            self.owner.pop(request.request_id, None)
            self.put(key, request)

    # --- busy time ------------------------------------------------------------------------------

    def _call_started(self, replica: int, items: int) -> None:
        if self.inflight_calls[replica] == 0:
            self.busy_since[replica] = time.perf_counter()
        self.inflight_calls[replica] += 1
        self.inflight_items[replica] += items

    def _call_ended(self, replica: int, items: int) -> None:
        self.inflight_calls[replica] -= 1
        self.inflight_items[replica] -= items
        if self.inflight_calls[replica] == 0:
            self.busy_s[replica] += time.perf_counter() - self.busy_since[replica]

    def busy_fractions(self) -> list[float]:
        """The share of the pool's life each replica had at least one call in flight."""
        now = time.perf_counter()
        elapsed = max(now - self.started, 1e-9)
        return [(busy + (now - since if calls else 0.0)) / elapsed
                for busy, since, calls in zip(self.busy_s, self.busy_since, self.inflight_calls)]
