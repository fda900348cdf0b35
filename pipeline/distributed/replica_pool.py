"""The replicas of one role (generators, or reward models): queues, calls in flight, busy time.

One object owns all bookkeeping about a role's replicas, so that the driver only puts requests in
and takes answers out (as Ray's ``ActorPool`` does). Each replica has a queue; a request is routed
to a replica when it is queued (least loaded, or cache-aware for generators: ``CacheAwareRouter``),
sent in batches of at most ``batch_size``, with at most ``max_inflight_calls`` calls per replica.
Each request in flight is owned by the call that carries it: when a call fails, its requests go back
to the queues of replicas that take work, and a late answer from the failed call is dropped, so
every request is answered exactly once. Which replicas take work is ``pipeline.distributed.replica_health``'s
call (rest after a failure, a probe before rejoining, retirement).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from pipeline.distributed.calls import CallFailure
from pipeline.distributed.replica_health import ReplicaHealth

UNAVAILABLE_LOAD = 10**12  # the load of a replica that takes no work: never the least loaded while another can work


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
        # a home that takes no work (it failed, or retired) while another replica does: the state moves
        # on, whatever the spill bound (with spill 0 its rollouts would otherwise wait there forever)
        unavailable = loads[home] >= UNAVAILABLE_LOAD > loads[least]
        if unavailable or (self.spill and loads[home] - loads[least] > self.spill):
            holders.append(least)
            return least
        return home

    def forget(self, replica: int) -> None:
        """A replica lost its cache (it died): its states are cached elsewhere or nowhere."""
        self.holders = {k: kept for k, v in self.holders.items() if (kept := [r for r in v if r != replica])}


@dataclass(slots=True)
class _Call:
    replica: int
    batch: list  # (routing key, request) pairs; empty for a probe
    started: float = field(default_factory=lambda: time.perf_counter())  # looked up at each call: tests fake the clock


class ReplicaPool:
    def __init__(self, name: str, replicas: list, calls, method: str, batch_size: int, max_inflight_calls: int,
                 router=None, retry_s: float = 2.0, max_failures: int = 3, recovery_timeout_s: float = 600.0):
        self.name, self.replicas, self.calls, self.method = name, replicas, calls, method
        self.batch_size, self.max_inflight_calls = batch_size, max_inflight_calls
        self.router = router or LeastLoadedRouter()
        self.health = ReplicaHealth(name, len(replicas), retry_s, max_failures, recovery_timeout_s)
        count = len(replicas)
        self.queues: list[deque] = [deque() for _ in range(count)]
        self.inflight_calls = [0] * count
        self.inflight_items = [0] * count
        self.unavailable = [0] * count  # UNAVAILABLE_LOAD while a replica takes no work (kept for lean routing)
        self.pending: dict = {}  # call token -> _Call (work)
        self.probes: dict = {}   # call token -> _Call (an empty call: is the replica back?)
        self.owner: dict[int, object] = {}  # request id -> the token of the call carrying it
        self.busy_s = [0.0] * count
        self.busy_since = [0.0] * count
        self.started = time.perf_counter()

    def __contains__(self, token) -> bool:
        return token in self.pending or token in self.probes

    def tokens(self) -> list:
        return [*self.pending, *self.probes]

    # --- queueing and sending -------------------------------------------------------------------

    def put(self, key, request) -> None:
        """Queue ``request`` (it has a ``request_id``) on the replica the router picks for ``key``."""
        replica = 0 if len(self.queues) == 1 else self.router.choose(key, self.loads())
        self.queues[replica].append((key, request))

    def loads(self) -> list[int]:  # called per request: kept lean
        return [len(q) + items + penalty for q, items, penalty in zip(self.queues, self.inflight_items, self.unavailable)]

    def dispatch(self) -> None:
        """Probe replicas that are due for it; send queued work to every replica that takes work and has room."""
        now = time.perf_counter()
        health = self.health
        for replica, queue in enumerate(self.queues):
            if health.due_for_probe(replica, now):
                self._send_probe(replica)
            while queue and self.inflight_calls[replica] < self.max_inflight_calls and health.takes_work(replica):
                batch = [queue.popleft() for _ in range(min(len(queue), self.batch_size))]
                token = self.calls.submit(self.replicas[replica], self.method, [request for _, request in batch])
                self.pending[token] = _Call(replica, batch)
                for _, request in batch:
                    self.owner[request.request_id] = token
                self._call_started(replica, len(batch))

    def _send_probe(self, replica: int) -> None:
        self.probes[self.calls.submit(self.replicas[replica], self.method, [])] = _Call(replica, [])
        self.health.probe_sent(replica)

    @property
    def has_queued(self) -> bool:
        return any(self.queues)

    # --- answers and failures -------------------------------------------------------------------

    def complete(self, token, answers: list) -> list:
        """A call's answers, without those its requests no longer belong to (re-sent after a failure)."""
        if token in self.probes:
            self.health.probe_answered(self.probes.pop(token).replica)
            self._sync_availability()
            return []
        call = self.pending.pop(token)
        self.health.call_answered(call.replica)
        self._call_ended(call.replica, len(call.batch))
        owned = []
        for answer in answers:
            if self.owner.get(answer.request_id) is token:
                del self.owner[answer.request_id]
                owned.append(answer)
        return owned

    def call_failed(self, token, failure: CallFailure, reason: str) -> None:
        """A replica's call raised: the replica rests (or retires) and its work goes to the others."""
        call = self.probes.pop(token, None) or self.pending.pop(token)
        if call.batch:
            self._call_ended(call.replica, len(call.batch))
        self.health.call_failed(call.replica, failure, reason, call.started)
        self._requeue(token, call)

    def expire_hung(self, limit_s: float) -> None:
        """A call unanswered for ``limit_s``: its replica is hung, so it is killed (Ray restarts it)
        and its work goes elsewhere. A probe unanswered for the health's recovery timeout: the replica
        is not coming back (nothing can host it), so it retires."""
        now = time.perf_counter()
        for token, call in list(self.pending.items()):
            if now - call.started > limit_s:
                if self.health.takes_work(call.replica):
                    self.calls.restart(self.replicas[call.replica])
                self.call_failed(token, CallFailure.hung, f"no answer within driver.call_timeout_s={limit_s:g}")
        for token, call in list(self.probes.items()):
            if self.health.probe_overdue(call.replica, now):
                del self.probes[token]
                self.health.retire(call.replica, f"not back within driver.replica_recovery_timeout_s="
                                                 f"{self.health.recovery_timeout_s:g} (its node may be gone)")
                self._requeue(token, call)
            elif self.health.probe_stale(call.replica, now):  # ask again; nobody waits for the old probe
                del self.probes[token]
                self._send_probe(call.replica)

    def _requeue(self, token, call: _Call) -> None:
        """Put the call's requests, and the replica's queue if it takes no work now, on the other replicas."""
        replica = call.replica
        self._sync_availability()
        stranded = [(key, r) for key, r in call.batch if self.owner.get(r.request_id) is token]
        if not self.health.takes_work(replica):
            stranded += self.queues[replica]
            self.queues[replica].clear()
            self.router.forget(replica)  # it lost its prefix cache, or will have none
        for key, request in stranded:
            self.owner.pop(request.request_id, None)
            self.put(key, request)

    def _sync_availability(self) -> None:
        """Refresh the routing penalty of replicas that take no work, and move work queued on them
        (when every replica was down at once) to those that take work again."""
        working = [self.health.takes_work(r) for r in range(len(self.replicas))]
        self.unavailable = [0 if ok else UNAVAILABLE_LOAD for ok in working]
        if any(working):
            for replica in (r for r, ok in enumerate(working) if not ok and self.queues[r]):
                moved = list(self.queues[replica])
                self.queues[replica].clear()
                for key, request in moved:
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
