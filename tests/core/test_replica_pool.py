"""The replica pool and its health without Ray: scripted calls that answer, fail, answer late or never.

``ScriptedCalls`` has the submit/wait/classify_failure/restart of ``LocalCalls``, but a call ends only
when the test says so: answered (now or after its call already failed), failed as the replica's
process dying, Ray restarting it, its code raising, or never. ``collect`` is the driver's loop over
them: it waits only on the calls the pool still holds. Time is a fake clock read by both modules,
so rests, probe resends and the recovery timeout are exact. The rules checked come from the two
modules' docstrings: a failed replica rests, takes work again only after a probe is answered, and
retires after ``max_failures`` failures in a row (one per incident) or a probe unanswered for
``recovery_timeout_s``; every request is delivered exactly once, by a replica that takes work.
"""

import itertools
from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from pipeline.distributed import replica_health, replica_pool
from pipeline.distributed.calls import CallFailure
from pipeline.distributed.replica_health import PROBE_RESEND_S, NoReplicaLeftError, Status
from pipeline.distributed.replica_pool import CacheAwareRouter, ReplicaPool


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


CLOCK = Clock()  # one clock for the module: the state machine below cannot take a fixture


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """Both modules read ``CLOCK``. ``_Call.started`` is a dataclass default bound to the real
    ``time.perf_counter`` when the module was imported, so the pool's ``_Call`` is wrapped too."""
    CLOCK.now = 1000.0
    fake_time = SimpleNamespace(perf_counter=CLOCK)
    monkeypatch.setattr(replica_pool, "time", fake_time)
    monkeypatch.setattr(replica_health, "time", fake_time)
    real_call = replica_pool._Call
    monkeypatch.setattr(replica_pool, "_Call", lambda replica, batch: real_call(replica, batch, CLOCK()))
    return CLOCK


@dataclass(frozen=True)
class Request:
    request_id: int


@dataclass(frozen=True)
class Answer:
    request_id: int
    replica: str


@dataclass
class Submitted:
    replica: str
    batch: list
    started: float


class ScriptedFailure(RuntimeError):
    def __init__(self, failure: CallFailure):
        super().__init__(f"scripted {failure.value}")
        self.failure = failure


class ScriptedCalls:
    """Calls that finish when the test says: ``answer`` or ``fail`` a token; the rest never end."""

    def __init__(self):
        self.submitted: dict[int, Submitted] = {}
        self.finished: dict[int, tuple] = {}
        self.restarted: list[str] = []
        self._tokens = itertools.count()

    def submit(self, replica, method, batch):
        token = next(self._tokens)
        self.submitted[token] = Submitted(replica, list(batch), CLOCK())
        return token

    def answer(self, token, repeat_first: bool = False) -> None:
        call = self.submitted[token]
        answers = [Answer(r.request_id, call.replica) for r in call.batch]
        self.finished[token] = (answers + answers[:1] if repeat_first else answers, None)

    def fail(self, token, failure: CallFailure) -> None:
        self.finished[token] = (None, ScriptedFailure(failure))

    def wait(self, tokens, timeout_s):
        return [(token, *self.finished.pop(token)) for token in tokens if token in self.finished]

    def classify_failure(self, error):
        return error.failure

    def restart(self, replica) -> None:
        self.restarted.append(replica)

    def sent_to(self, replica: str, since: int = 0) -> list[list[int]]:
        """The request ids of each call sent to ``replica`` from token ``since`` on ([] for a probe)."""
        return [[r.request_id for r in c.batch] for t, c in self.submitted.items() if t >= since and c.replica == replica]

    def live(self, pool, replica: str, probes: bool = False) -> list[int]:
        held = pool.probes if probes else pool.pending
        return [t for t in held if self.submitted[t].replica == replica]


def collect(pool: ReplicaPool, calls: ScriptedCalls) -> list[Answer]:
    """The driver's handling of finished calls (``Driver._on_answers``): it waits only on the pool's calls."""
    delivered = []
    for token, answers, error in calls.wait(pool.tokens(), 0.0):
        if error is None:
            delivered += pool.complete(token, answers)
        else:
            pool.call_failed(token, calls.classify_failure(error), str(error))
    return delivered


def make_pool(calls, replicas=2, batch_size=1, max_inflight_calls=1, router=None, retry_s=2.0, max_failures=3,
              recovery_timeout_s=600.0):
    return ReplicaPool("generator", [f"r{i}" for i in range(replicas)], calls, "generate", batch_size, max_inflight_calls,
                       router, retry_s, max_failures, recovery_timeout_s)


def put(pool, ids, key=None):
    for i in ids:
        pool.put(key, Request(i))


# --- rest, probe, rejoin ---------------------------------------------------------------------------

def test_a_failed_replica_rests_then_takes_work_only_after_its_probe_is_answered():
    calls = ScriptedCalls()
    pool = make_pool(calls, retry_s=2.0)
    put(pool, [0, 1])  # one each (least loaded, ties to the first)
    pool.dispatch()
    assert calls.sent_to("r0") == [[0]] and calls.sent_to("r1") == [[1]]
    calls.fail(calls.live(pool, "r0")[0], CallFailure.died)
    assert collect(pool, calls) == []
    assert not pool.health.takes_work(0)

    CLOCK.advance(1.9)  # resting: neither work nor a probe for r0
    put(pool, [2])
    mark = len(calls.submitted)
    pool.dispatch()
    calls.answer(calls.live(pool, "r1")[0])
    assert [a.request_id for a in collect(pool, calls)] == [1]
    pool.dispatch()  # r1 takes the failed call's request, then the new one
    assert calls.sent_to("r0", mark) == [] and calls.sent_to("r1", mark) == [[0]]

    CLOCK.advance(0.2)  # rest over (2 s after one failure): a probe, an empty call
    pool.dispatch()
    assert calls.sent_to("r0", mark) == [[]]
    put(pool, [3])
    pool.dispatch()
    assert calls.sent_to("r0", mark) == [[]] and pool.health.status[0] == Status.probing  # still no work

    calls.answer(calls.live(pool, "r0", probes=True)[0])
    assert collect(pool, calls) == []  # a probe delivers nothing
    assert pool.health.takes_work(0) and pool.health.rejoined == 1
    put(pool, [4])  # r1 has 2 and 3 queued: the least loaded is r0 now
    pool.dispatch()
    assert calls.sent_to("r0", mark) == [[], [4]]


def test_rests_grow_with_each_failure_in_a_row():
    """The rest after the k-th failure in a row is k * retry_s (replica_health.call_failed)."""
    calls = ScriptedCalls()
    pool = make_pool(calls, retry_s=2.0, max_failures=4)
    put(pool, [0])
    pool.dispatch()
    calls.fail(calls.live(pool, "r0")[0], CallFailure.died)
    collect(pool, calls)
    for failures in (1, 2, 3):
        CLOCK.advance(2.0 * failures - 0.01)
        pool.dispatch()
        assert not calls.live(pool, "r0", probes=True), f"probed before a rest of {2.0 * failures} s"
        CLOCK.advance(0.02)
        pool.dispatch()
        (probe,) = calls.live(pool, "r0", probes=True)
        calls.fail(probe, CallFailure.died)
        collect(pool, calls)
    assert pool.health.failures_in_row[0] == 4 and pool.health.status[0] == Status.retired


# --- retirement ------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_failures", [1, 2, 3, 5])
@pytest.mark.parametrize("failure", [CallFailure.died, CallFailure.error])
def test_a_replica_retires_after_exactly_max_failures_in_a_row(max_failures, failure):
    """The first failure is a work call dying; each later one a probe failing (the replica is not
    back). It takes work on r1 meanwhile; r0 retires at the max_failures-th, not one earlier or later."""
    calls = ScriptedCalls()
    pool = make_pool(calls, retry_s=1.0, max_failures=max_failures)
    put(pool, [0])
    pool.dispatch()
    calls.fail(calls.live(pool, "r0")[0], CallFailure.died)
    collect(pool, calls)
    for failures in range(1, max_failures + 2):
        if failures == max_failures:
            assert pool.health.status[0] == Status.retired
            assert f"failed {max_failures} times in a row" in pool.health.last_error[0]
            break
        assert pool.health.status[0] == Status.resting, failures
        CLOCK.advance(1.0 * failures + 0.01)
        pool.dispatch()
        (probe,) = calls.live(pool, "r0", probes=True)
        calls.fail(probe, failure)
        collect(pool, calls)
    CLOCK.advance(1e4)
    mark = len(calls.submitted)
    pool.dispatch()
    assert calls.sent_to("r0", mark) == []  # retired: never probed again
    assert pool.health.retired == 1 and pool.health.takes_work(1)


def test_a_served_call_between_failures_starts_the_count_again_and_a_probe_alone_does_not():
    calls = ScriptedCalls()
    pool = make_pool(calls, replicas=2, retry_s=1.0, max_failures=2)

    def fail_work_on_r0():
        put(pool, [next(ids)])
        put(pool, [next(ids)])  # the second goes to r1 (r0 has the first queued)
        pool.dispatch()
        calls.fail(calls.live(pool, "r0")[0], CallFailure.died)
        calls.answer(calls.live(pool, "r1")[0])
        collect(pool, calls)

    def rejoin_r0():
        CLOCK.advance(10.0)
        pool.dispatch()
        calls.answer(calls.live(pool, "r0", probes=True)[0])
        collect(pool, calls)
        assert pool.health.takes_work(0)

    ids = itertools.count()
    fail_work_on_r0()
    rejoin_r0()
    put(pool, [next(ids)])  # r0 serves a call: the failure before no longer counts
    pool.dispatch()
    for token in calls.live(pool, "r0") + calls.live(pool, "r1"):
        calls.answer(token)
    collect(pool, calls)
    assert pool.health.failures_in_row[0] == 0
    fail_work_on_r0()
    assert pool.health.status[0] == Status.resting  # one in a row
    rejoin_r0()  # back, but it serves nothing before failing again: two in a row
    fail_work_on_r0()
    assert pool.health.status[0] == Status.retired


def test_calls_lost_in_one_incident_count_as_one_failure():
    calls = ScriptedCalls()
    pool = make_pool(calls, replicas=2, max_inflight_calls=3, max_failures=2)
    put(pool, range(6))  # three calls on each replica
    pool.dispatch()
    assert len(calls.live(pool, "r0")) == 3
    for token in calls.live(pool, "r0"):
        calls.fail(token, CallFailure.died)
    collect(pool, calls)
    assert pool.health.failures_total == 1 and pool.health.failures_in_row[0] == 1
    assert pool.health.status[0] == Status.resting and pool.health.lost == 1


def test_a_probe_failing_while_ray_restarts_the_replica_is_not_another_failure():
    calls = ScriptedCalls()
    pool = make_pool(calls, retry_s=1.0, max_failures=2)
    put(pool, [0])
    pool.dispatch()
    calls.fail(calls.live(pool, "r0")[0], CallFailure.died)
    collect(pool, calls)
    for _ in range(5):
        CLOCK.advance(1.5)
        pool.dispatch()
        calls.fail(calls.live(pool, "r0", probes=True)[0], CallFailure.restarting)
        collect(pool, calls)
        assert pool.health.status[0] == Status.resting and pool.health.failures_in_row[0] == 1


def test_a_probe_unanswered_within_the_recovery_timeout_retires_the_replica():
    calls = ScriptedCalls()
    pool = make_pool(calls, retry_s=1.0, recovery_timeout_s=30.0)
    put(pool, [0, 1])
    pool.dispatch()
    calls.fail(calls.live(pool, "r0")[0], CallFailure.died)
    collect(pool, calls)
    CLOCK.advance(1.0)
    mark = len(calls.submitted)
    pool.dispatch()  # the probe goes out at t0
    put(pool, [2])  # queued on r1 (r0 takes no work)
    assert calls.sent_to("r0", mark) == [[]]
    for elapsed in (PROBE_RESEND_S + 0.5, 2 * PROBE_RESEND_S + 1.0, 29.9):
        CLOCK.now = 1001.0 + elapsed
        pool.expire_hung(float("inf"))
        assert pool.health.status[0] == Status.probing, elapsed
    assert calls.sent_to("r0", mark) == [[], [], []]  # resent every PROBE_RESEND_S: Ray may lose a probe
    CLOCK.now = 1001.0 + 30.1
    pool.expire_hung(float("inf"))
    assert pool.health.status[0] == Status.retired and "replica_recovery_timeout_s=30" in pool.health.last_error[0]
    assert not pool.probes
    calls.answer(calls.live(pool, "r1")[0])
    collect(pool, calls)
    pool.dispatch()
    assert calls.sent_to("r1", mark) == [[0]]  # the failed request, then [2], go to r1 only


# --- every request exactly once --------------------------------------------------------------------

def test_a_hung_calls_late_answer_is_dropped_and_its_requests_delivered_once_by_another_replica():
    calls = ScriptedCalls()
    pool = make_pool(calls, replicas=2, batch_size=2)
    put(pool, [0, 1, 2, 3])  # 0, 2 on r0; 1, 3 on r1
    pool.dispatch()
    hung = calls.live(pool, "r0")[0]
    calls.answer(calls.live(pool, "r1")[0])
    delivered = collect(pool, calls)
    CLOCK.advance(5.5)
    pool.expire_hung(5.0)  # r0's call is hung: r0 is killed (Ray restarts it), its requests go to r1
    assert calls.restarted == ["r0"] and hung not in pool and pool.health.status[0] == Status.resting
    pool.dispatch()
    (resent,) = calls.live(pool, "r1")
    assert calls.submitted[resent].batch == calls.submitted[hung].batch
    calls.answer(hung)  # the hung call answers after all
    assert collect(pool, calls) == []
    calls.answer(resent)
    delivered += collect(pool, calls)
    assert sorted(a.request_id for a in delivered) == [0, 1, 2, 3]
    assert {a.replica for a in delivered} == {"r1"}


def test_a_call_delivers_each_of_its_requests_once_even_if_the_replica_repeats_an_answer():
    """``complete`` passes on only the answers of requests the call still carries; a second answer
    to one of them is not its request any more (this is the pool's exactly-once rule at its
    narrowest: through the driver's loop a failed call is never waited on again)."""
    calls = ScriptedCalls()
    pool = make_pool(calls, replicas=1, batch_size=3)
    put(pool, [0, 1, 2])
    pool.dispatch()
    (token,) = pool.tokens()
    calls.answer(token, repeat_first=True)
    assert [a.request_id for a in collect(pool, calls)] == [0, 1, 2]


def test_the_requests_of_a_failed_call_go_to_the_replicas_that_take_work():
    calls = ScriptedCalls()
    pool = make_pool(calls, replicas=3, batch_size=4)
    put(pool, range(12))  # 0, 3, 6, 9 on r0; 1, 4, 7, 10 on r1; 2, 5, 8, 11 on r2
    pool.dispatch()
    failed = calls.live(pool, "r1")[0]
    mark = len(calls.submitted)
    calls.fail(failed, CallFailure.died)
    collect(pool, calls)
    delivered = []
    for _ in range(4):
        for token in pool.tokens():
            if token in pool.pending:
                calls.answer(token)
        delivered += collect(pool, calls)
        pool.dispatch()
    resent = sorted(i for r in ("r0", "r2") for batch in calls.sent_to(r, mark) for i in batch)
    assert resent == [1, 4, 7, 10] and calls.sent_to("r1", mark) == []
    assert Counter(a.request_id for a in delivered) == Counter(range(12))


def test_when_every_replica_retires_the_role_stops_with_no_replica_left():
    calls = ScriptedCalls()
    pool = make_pool(calls, replicas=2, max_failures=1)
    put(pool, [0, 1])
    pool.dispatch()
    calls.fail(calls.live(pool, "r0")[0], CallFailure.died)
    collect(pool, calls)
    assert pool.health.status[0] == Status.retired  # the other goes on
    calls.fail(calls.live(pool, "r1")[0], CallFailure.error)
    with pytest.raises(NoReplicaLeftError, match="every generator replica is lost .*replica 0: .*replica 1: "):
        collect(pool, calls)


# --- cache-aware routing ---------------------------------------------------------------------------

def test_a_state_stays_on_its_replica_until_it_has_more_than_spill_waiting_beyond_the_least_loaded():
    """spill = 3: the state's home takes its rollouts while home's load minus the least load is at
    most 3, i.e. its first 4 (loads 0..3 against 0); the 5th (4 against 0) goes to the other
    replica, which holds the state from then on; then the less loaded of the two gets it."""
    calls = ScriptedCalls()
    pool = make_pool(calls, replicas=2, router=CacheAwareRouter(spill=3))
    state = ("p0", 7)
    put(pool, range(4), state)
    assert [len(q) for q in pool.queues] == [4, 0]
    put(pool, [4], state)
    assert [len(q) for q in pool.queues] == [4, 1]
    put(pool, [5, 6, 7], state)  # the less loaded of its two holders: r1, at 1, 2, 3 against r0's 4
    assert [len(q) for q in pool.queues] == [4, 4]
    put(pool, [8], state)  # equal loads: the first holder, r0
    assert [len(q) for q in pool.queues] == [5, 4]
    put(pool, [9], None)  # from the prompt: the least loaded
    assert [len(q) for q in pool.queues] == [5, 5]


def test_with_spill_zero_a_state_never_leaves_its_replica_until_that_replica_fails():
    calls = ScriptedCalls()
    pool = make_pool(calls, replicas=2, batch_size=50, router=CacheAwareRouter(spill=0))
    put(pool, range(20), ("p0", 1))
    assert [len(q) for q in pool.queues] == [20, 0]
    pool.dispatch()
    calls.fail(calls.live(pool, "r0")[0], CallFailure.died)  # r0 lost its prefix cache
    collect(pool, calls)
    put(pool, [20], ("p0", 1))
    assert [len(q) for q in pool.queues] == [0, 21]  # the state's rollouts all moved to r1, its new home
    CLOCK.advance(10.0)
    pool.dispatch()
    calls.answer(calls.live(pool, "r0", probes=True)[0])
    collect(pool, calls)
    put(pool, [21], ("p0", 1))  # r0 is back and idle, r1 has 21 in flight, but r1 holds the state
    assert pool.health.takes_work(0) and not pool.queues[0]
    assert [r.request_id for _, r in pool.queues[1]] == [21]


def test_a_states_rollouts_queued_while_every_replica_was_down_reach_the_replica_that_comes_back():
    calls = ScriptedCalls()
    pool = make_pool(calls, replicas=2, retry_s=1.0, max_failures=2, router=CacheAwareRouter(spill=0))
    put(pool, [0, 1])
    pool.dispatch()
    calls.fail(calls.live(pool, "r0")[0], CallFailure.died)
    collect(pool, calls)
    CLOCK.advance(1.0)
    pool.dispatch()
    calls.fail(calls.live(pool, "r0", probes=True)[0], CallFailure.died)  # r0's second failure in a row
    collect(pool, calls)
    assert pool.health.status[0] == Status.retired
    calls.fail(calls.live(pool, "r1")[0], CallFailure.died)  # r1 rests: no replica takes work
    collect(pool, calls)
    put(pool, [2], ("p0", 3))
    delivered = []
    for _ in range(5):
        CLOCK.advance(5.0)
        pool.dispatch()
        for token in pool.tokens():
            calls.answer(token)
        delivered += collect(pool, calls)
    assert pool.health.takes_work(1)
    assert sorted(a.request_id for a in delivered) == [0, 1, 2]


# --- random interleavings --------------------------------------------------------------------------

class PoolMachine(RuleBasedStateMachine):
    """Random interleavings of put, dispatch, answer, fail, hang and expiry, late answers and time.

    Checked after every step: each request put is delivered at most once, and is at every moment
    exactly one of delivered, queued or carried by a call the pool holds (never lost while a replica
    is left); a replica is retired exactly when its failures in a row, counted once per incident
    (a call sent before the last counted failure fails with it; a probe failing while Ray restarts
    the replica is not a failure; a call served while the replica takes work ends the row), reach
    ``max_failures``. At the end every replica recovers and every request put is delivered once."""

    HUNG_S = 12.0

    def __init__(self):
        super().__init__()
        CLOCK.now = 1000.0
        self.calls = ScriptedCalls()
        self.ids = itertools.count()
        self.put_ids: set[int] = set()
        self.delivered: Counter = Counter()
        self.failed_tokens: list[int] = []
        self.all_retired = False

    @initialize(replicas=st.integers(1, 3), max_failures=st.integers(1, 3), spill=st.sampled_from([None, 0, 1, 3]))
    def make(self, replicas, max_failures, spill):
        self.max_failures = max_failures
        router = None if spill is None else CacheAwareRouter(spill)
        # a recovery timeout no run here reaches: retirement by failures alone (its own test is above)
        self.pool = make_pool(self.calls, replicas, batch_size=2, max_inflight_calls=2, router=router, retry_s=1.0,
                              max_failures=max_failures, recovery_timeout_s=1e9)
        self.in_row = [0] * replicas
        self.last_failure = [-float("inf")] * replicas
        self.expect_retired = [False] * replicas

    # the reference count of failures in a row, from the health module's docstring
    def _count_failure(self, replica: int, started: float, failure: CallFailure, took_work: bool) -> None:
        if self.expect_retired[replica] or started <= self.last_failure[replica]:
            return  # retired already, or the incident already counted
        if failure == CallFailure.restarting and not took_work:
            return  # a probe while Ray brings it back
        self.in_row[replica] += 1
        self.last_failure[replica] = CLOCK.now
        self.expect_retired[replica] = self.in_row[replica] >= self.max_failures

    def _index(self, token) -> int:
        return int(self.calls.submitted[token].replica[1:])

    def _collect(self):
        """The driver's loop: the finished calls handled, then the next dispatch."""
        try:
            for answer in collect(self.pool, self.calls):
                self.delivered[answer.request_id] += 1
        except NoReplicaLeftError:
            assert all(self.expect_retired), "NoReplicaLeftError while a replica should still work"
            self.all_retired = True
            return
        self.pool.dispatch()

    @precondition(lambda self: not self.all_retired)
    @rule(count=st.integers(1, 6), key=st.sampled_from([None, ("p", 1), ("p", 2)]))
    def put(self, count, key):
        for _ in range(count):
            request_id = next(self.ids)
            self.put_ids.add(request_id)
            self.pool.put(key, Request(request_id))

    @precondition(lambda self: not self.all_retired)
    @rule()
    def dispatch(self):
        self.pool.dispatch()

    @precondition(lambda self: not self.all_retired and self.pool.tokens())
    @rule(data=st.data())
    def answer(self, data):
        token = data.draw(st.sampled_from(sorted(self.pool.tokens())))
        replica = self._index(token)
        if token in self.pool.pending and self.pool.health.takes_work(replica):
            self.in_row[replica] = 0
        self.calls.answer(token)
        self._collect()

    @precondition(lambda self: not self.all_retired and self.pool.tokens())
    @rule(data=st.data(), failure=st.sampled_from([CallFailure.died, CallFailure.restarting, CallFailure.error]))  # hung: expiry
    def fail(self, data, failure):
        token = data.draw(st.sampled_from(sorted(self.pool.tokens())))
        if failure == CallFailure.error and token in self.pool.pending:
            failure = CallFailure.died  # a work call's own error stops the driver (ReplicaCallError)
        replica = self._index(token)
        self._count_failure(replica, self.calls.submitted[token].started, failure, self.pool.health.takes_work(replica))
        self.calls.fail(token, failure)
        self.failed_tokens.append(token)
        self._collect()

    @rule(seconds=st.sampled_from([0.5, 1.5, 3.0]))  # always allowed: the machine runs on once every replica retired
    def advance(self, seconds):
        CLOCK.advance(seconds)  # rests end (1 s per failure in a row), calls grow old

    @precondition(lambda self: not self.all_retired)
    @rule()
    def expire_hung_calls(self):
        for token, call in list(self.pool.pending.items()):
            if CLOCK.now - self.calls.submitted[token].started > self.HUNG_S:
                self._count_failure(call.replica, self.calls.submitted[token].started, CallFailure.hung, True)
                self.failed_tokens.append(token)
        try:
            self.pool.expire_hung(self.HUNG_S)
        except NoReplicaLeftError:
            assert all(self.expect_retired)
            self.all_retired = True
            return
        self.pool.dispatch()

    @precondition(lambda self: not self.all_retired and self.failed_tokens)
    @rule(data=st.data())
    def late_answer(self, data):
        self.calls.answer(data.draw(st.sampled_from(self.failed_tokens)))
        self._collect()

    @invariant()
    def each_request_once_and_none_lost(self):
        assert all(count == 1 for count in self.delivered.values()), self.delivered
        if self.all_retired or not hasattr(self, "pool"):
            return
        queued = [r.request_id for queue in self.pool.queues for _, r in queue]
        carried = [r.request_id for call in self.pool.pending.values() for _, r in call.batch]
        everywhere = Counter(queued) + Counter(carried) + self.delivered
        assert everywhere == Counter(self.put_ids)

    @invariant()
    def no_work_waits_on_a_replica_that_takes_none_while_another_takes_some(self):
        if self.all_retired or not hasattr(self, "pool"):
            return
        health = self.pool.health
        working = [health.takes_work(r) for r in range(len(self.pool.queues))]
        if any(working):
            assert all(ok or not queue for ok, queue in zip(working, self.pool.queues)), (
                [s.value for s in health.status], [len(q) for q in self.pool.queues])

    @invariant()
    def retired_exactly_after_max_failures_in_a_row(self):
        if self.all_retired or not hasattr(self, "pool"):
            return
        retired = [status == Status.retired for status in self.pool.health.status]
        assert retired == self.expect_retired, (self.in_row, self.pool.health.failures_in_row)

    def teardown(self):
        if self.all_retired or not hasattr(self, "pool"):
            return
        for _ in range(200):  # every replica left recovers and answers everything
            if not (self.pool.has_queued or self.pool.tokens()):
                break
            CLOCK.advance(10.0)
            self.pool.dispatch()
            for token in self.pool.tokens():
                self.calls.answer(token)
            self._collect()
        assert self.delivered == Counter(self.put_ids)


def test_random_interleavings_deliver_every_request_once_and_retire_exactly_at_max_failures():
    run_state_machine_as_test(PoolMachine, settings=settings(max_examples=300, stateful_step_count=50, deadline=None,
                                                              suppress_health_check=[HealthCheck.too_slow]))
