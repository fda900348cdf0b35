"""The driver: runs many searches at once against the generator and reward replicas.

It admits searches (at most ``max_concurrent_prompts`` at a time) in groups that share a policy
(``pipeline.distributed.policy_groups``: up to ``policy_batch`` searches of one method, budget and
search config, an episode each), turns each search's row of its group's round into seeded rollout
requests, hands them to the generator pool, passes each finished rollout on to the reward pool as
it arrives (generation and scoring overlap), and once every member's round is scored gives the
rewards to the policy and plans the next round. While one group waits at its round barrier, others
keep the replicas busy. The path of one rollout, in this file's order:
``_queue_rollout`` -> generator pool (``pipeline.distributed.replica_pool``) -> generator replica ->
``_on_rollouts`` -> reward pool -> reward replica -> ``_on_scores`` -> the search's record
(``pipeline.distributed.search_record``) -> its policy.

The driver holds all search state; replicas hold none. It is a plain class: ``slg run`` makes it a
Ray actor and calls :meth:`Driver.step` until it reports everything done; tests run it in-process.
Seeds derive from (run seed, prompt id, node, index within the node), never from dispatch order, so
results do not depend on the number of replicas, and all methods share rollouts: root rollout k of
a prompt is the same rollout for every method and budget (common random numbers).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import itertools
import math
import resource
import time
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.distributed.calls import CallFailure
from pipeline.distributed.contract import Rollout, RolloutRequest, Score, ScoreRequest
from pipeline.distributed.driver_clock import DriverClock
from pipeline.distributed.policy_groups import PolicyGroup, batches, group_size
from pipeline.distributed.replica_pool import CacheAwareRouter, ReplicaPool
from pipeline.distributed.search_record import Ledger, SearchRecord, SearchSpec, Slot, node_name
from pipeline.search.protocol import ROOT


def derive_seed(*parts) -> int:
    """A 31-bit seed from its parts, stable across processes and machines (never ``hash()``)."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


@functools.lru_cache(maxsize=1 << 16)
def _seed_prefix(seed: int, prompt_id: str, node: str):
    return hashlib.blake2b(f"{seed}/{prompt_id}/{node}/".encode(), digest_size=8)


def rollout_seed(seed: int, prompt_id: str, node: str, index: int) -> int:
    """``derive_seed(seed, prompt_id, node, index)``, hashing the shared prefix of a node's rollouts once."""
    hasher = _seed_prefix(seed, prompt_id, node).copy()
    hasher.update(str(index).encode())
    return int.from_bytes(hasher.digest(), "little") & 0x7FFFFFFF


class NonFiniteRewardError(RuntimeError):
    """The reward model returned NaN or infinity (and ``reward.nonfinite`` says stop)."""


class ReplicaCallError(RuntimeError):
    """A replica's own code raised on a batch: re-sending it would fail the same way."""


class SearchObserver:
    """Hooks for jobs that need more than the results: ``slg bench`` logs requests, ``slg collect``
    records every reward. The default does nothing; subclasses override what they need."""

    def rollout_requested(self, search: SearchRecord, request: RolloutRequest) -> None:
        pass

    def rollout_scored(self, search: SearchRecord, slot: Slot, position: int, rollout: Rollout, reward: float,
                       sequence: int) -> None:
        """A rollout got a finite reward; ``sequence`` is its place in the search's plan order."""

    def round_scored(self, search: SearchRecord) -> None:
        pass

    def search_finished(self, search: SearchRecord, row: dict) -> None:
        pass

    def report(self):
        return None


@dataclass(slots=True)
class _Ticket:
    """One rollout on its way: where its reward goes once generated and scored."""

    search: SearchRecord
    slot: Slot
    position: int
    root_index: int | None
    sequence: int
    rollout: Rollout | None = None
    prefix: tuple | None = None  # token ids of the state prefix scored with this rollout (``ScoreRequest.prefix_text``)


class Driver:
    """``calls`` says how replicas are called: ``RayCalls`` for actors, ``LocalCalls`` for plain objects.
    ``in_order_window``: searches finish at most that many places out of order (``within_window``)."""

    def __init__(self, searches: list[SearchSpec], generators: list, rewards: list, settings, seed: int, calls,
                 drop_nonfinite: bool = False, ground_truth=None, observer: SearchObserver | None = None,
                 answers_vote: bool = True, in_order_window: int | None = None):
        self.settings, self.seed = settings, seed
        self.answers_vote = answers_vote  # the generators read answers to vote on (a simulated one does not)
        self.drop_nonfinite = drop_nonfinite
        self.ground_truth = ground_truth  # exact node values (sim only): what the oracle method selects by
        self.observer = observer
        self.calls = calls
        self.generation, self.scoring = replica_pools(settings, generators, rewards, calls)
        self.in_order_window = in_order_window
        # searches in groups that share a policy (``policy_groups``): at most half the searches in flight (and the window)
        self.queue = deque(batches(searches, group_size(settings, in_order_window)))
        self.admitted = 0  # searches admitted so far: the next one's place in the order
        self.total = len(searches)
        self.active: list[SearchRecord] = []
        self.tickets: dict[int, _Ticket] = {}
        self.request_ids = itertools.count()
        self.finished_totals = Ledger()  # of searches already finished; active ones add theirs in progress()
        self.searches_done = 0
        self.clock = DriverClock()  # what its own work costs: wall, CPU, and the policies' and calls' parts
        self.started = time.perf_counter()

    # --- the loop --------------------------------------------------------------------------------

    def step(self, max_s: float | None = None) -> tuple[list[dict], dict]:
        """Work for up to ``max_s`` seconds (None: until done); return finished results and progress."""
        deadline = None if max_s is None else time.perf_counter() + max_s
        finished: list[dict] = []
        with self.clock.cpu:
            while True:
                with self.clock.busy:
                    self._admit(finished)
                    with self.clock.calls:
                        self.generation.dispatch()
                        self.scoring.dispatch()
                if self.done:  # probes of recovering replicas may still be out: no search waits on them
                    break
                pending = [*self.generation.tokens(), *self.scoring.tokens()]
                if not pending:  # every replica that could take the queued work rests after a failure
                    if deadline is not None and time.perf_counter() >= deadline:
                        break
                    time.sleep(0.05)
                    continue
                timeout = 1.0 if deadline is None else max(0.0, deadline - time.perf_counter())
                if self.settings.call_timeout_s:
                    timeout = min(timeout, self.settings.call_timeout_s)
                with self.clock.calls:
                    done = self.calls.wait(pending, timeout)
                with self.clock.busy:
                    for token, answers, error in done:
                        self._on_answers(token, answers, error, finished)
                    self.generation.expire_hung(self.settings.call_timeout_s or float("inf"))
                    self.scoring.expire_hung(self.settings.call_timeout_s or float("inf"))
                if deadline is not None and time.perf_counter() >= deadline:
                    break
        return finished, self.progress()

    def _on_answers(self, token, answers, error, finished: list[dict]) -> None:
        pool = self.generation if token in self.generation else self.scoring
        if error is not None:
            failure = self.calls.classify_failure(error)
            if failure == CallFailure.error and token in pool.pending:  # a probe's error: the replica is not up yet
                call = pool.pending[token]
                raise ReplicaCallError(f"{pool.name} replica {call.replica} failed on a batch of {len(call.batch)}: "
                                       f"{error_summary(error)}") from error
            pool.call_failed(token, failure, error_summary(error))
        elif pool is self.generation:
            self._on_rollouts(pool.complete(token, answers))
        else:
            self._on_scores(pool.complete(token, answers), finished)

    # --- searches in, rollouts out ---------------------------------------------------------------

    def _admit(self, finished: list[dict]) -> None:
        while (self.queue and len(self.active) + len(self.queue[0]) <= self.settings.max_concurrent_prompts
               and within_window(self.active, self.admitted + len(self.queue[0]) - 1, self.in_order_window)):
            specs = self.queue.popleft()
            members = [SearchRecord(spec, self.answers_vote, row) for row, spec in enumerate(specs)]
            for search in members:
                search.order, self.admitted = self.admitted, self.admitted + 1
            seed = derive_seed(self.seed, specs[0].prompt.prompt_id, specs[0].method, specs[0].budget)  # its first search's
            true_value = true_values_of(members[0], self.ground_truth) if specs[0].policy_class.needs_true_values else None
            with self.clock.policy:
                group = PolicyGroup(members, seed, true_value)
            self.active.extend(members)
            self._plan(group, finished)

    def _plan(self, group: PolicyGroup, finished: list[dict]) -> None:
        """Queue the rollouts of the group's next round, each member its row (or finish its searches)."""
        while True:
            requests = group.policy.plan()
            if not requests:
                for search in group.members:
                    self._finish(search, finished)
                return
            for search, slot in group.take_round(requests):
                for position in range(slot.count):
                    self._queue_rollout(search, slot, position)
            if group.waiting:
                return
            with self.clock.policy:  # a round that asked for nothing
                group.policy.observe(group.round_results())

    def _queue_rollout(self, search: SearchRecord, slot: Slot, position: int) -> None:
        index, root_index, state = search.plan_rollout(slot.node, slot.grow)
        prompt_id = search.prompt.prompt_id
        request = RolloutRequest(next(self.request_ids), search.prompt, state,
                                 rollout_seed(self.seed, prompt_id, node_name(slot.node), index), slot.max_new_tokens)
        self.tickets[request.request_id] = _Ticket(search, slot, position, root_index, next(search.sequence))
        # a state's rollouts prefer the replica whose prefix cache holds it; the prompt's go anywhere
        self.generation.put(None if slot.node == ROOT else (prompt_id, slot.node), request)
        if self.observer is not None:
            self.observer.rollout_requested(search, request)

    def _on_rollouts(self, rollouts: list[Rollout]) -> None:
        for rollout in rollouts:
            ticket = self.tickets[rollout.request_id]
            ticket.rollout = rollout
            search = ticket.search
            search.record_rollout(rollout, ticket.slot, ticket.position, ticket.root_index)
            # a new state's prefix is scored alone (a partial response, as Speculative Rejection scores
            # them) in the same item as the rollout that revealed it
            prefix = None
            if ticket.root_index is not None and search.wants_prefix_score(ticket.slot, rollout.state):
                prefix, ticket.prefix = rollout.state.text, rollout.state.token_ids
            self.scoring.put(None, ScoreRequest(rollout.request_id, search.prompt, rollout.response_text, prefix))

    def _on_scores(self, scores: list[Score], finished: list[dict]) -> None:
        for score in scores:
            ticket = self.tickets.pop(score.request_id)
            search, rollout = ticket.search, ticket.rollout
            if ticket.prefix is not None:
                if score.prefix_reward is None:
                    raise RuntimeError(f"the reward model left the prefix of request {score.request_id} unscored "
                                       "(its score method needs contract.scores_prefixes)")
                search.record_prefix_score(ticket.prefix, float(score.prefix_reward), score.prefix_num_tokens)
            reward = float(score.reward)
            search.ledger.add_score(score.num_tokens)
            if not math.isfinite(reward):
                if not self.drop_nonfinite:
                    raise NonFiniteRewardError(
                        f"the reward model returned {reward} for prompt {search.prompt.prompt_id!r}, node "
                        f"{node_name(ticket.slot.node)} (set reward.nonfinite=drop to drop such rollouts)")
                search.ledger.dropped_scores += 1
            else:
                search.record_reward(reward, rollout, ticket.slot, ticket.position, ticket.sequence)
                if self.observer is not None:
                    self.observer.rollout_scored(search, ticket.slot, ticket.position, rollout, reward, ticket.sequence)
            self._one_less_waiting(search, finished)

    def _one_less_waiting(self, search: SearchRecord, finished: list[dict]) -> None:
        """One score of the search's round is in; the last one hands the round to its policy."""
        search.waiting -= 1
        if search.waiting == 0:
            if self.observer is not None:
                self.observer.round_scored(search)
            group = search.group
            if group.member_scored():  # every member's round is in: the policy plays them at once
                with self.clock.policy:
                    group.policy.observe(group.round_results())
                self._plan(group, finished)

    def _finish(self, search: SearchRecord, finished: list[dict]) -> None:
        self.active.remove(search)
        self.searches_done += 1
        self.finished_totals += search.ledger
        row = search.result_row()
        if self.observer is not None:
            self.observer.search_finished(search, row)
        finished.append(row)
        search.group = None  # (a record and its group refer to each other: both go as the search ends)

    # --- reports ---------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return not self.queue and not self.active and not self.generation.pending and not self.scoring.pending

    def progress(self) -> dict:
        elapsed = time.perf_counter() - self.started
        totals = run_totals(sum((search.ledger for search in self.active), self.finished_totals))
        return {**totals, "searches_done": self.searches_done, "searches_total": self.total, "elapsed_s": elapsed, "done": self.done,
                "rollouts_per_s": totals["rollouts_scored"] / elapsed if elapsed > 0 else 0.0,
                "tokens_per_s": totals["tokens_generated"] / elapsed if elapsed > 0 else 0.0,
                **self.clock.report(),
                "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
                **replica_report(self.generation.health, self.scoring.health)}

    def busy_fractions(self) -> dict[str, list[float]]:
        return {"generate": self.generation.busy_fractions(), "score": self.scoring.busy_fractions()}

    def observer_report(self):
        """What the observer gathered (``slg bench``: the requests it replays on a bare engine)."""
        return None if self.observer is None else self.observer.report()


def run_totals(ledger: Ledger) -> dict:
    """The counts of a whole run's ledger (its searches' ledgers summed) as progress reports them."""
    totals = asdict(ledger)
    totals["rollouts_generated"] = totals.pop("rollouts")
    for name in ("empty_rollouts", "dropped_scores"):
        del totals[name]
    return totals


def true_values_of(search: SearchRecord, ground_truth):
    """The ``true_value`` hook of a search's policy (the ``oracle`` method): exact node values from
    the simulated backend's ground truth."""
    if ground_truth is None:
        raise RuntimeError(f"method {search.method!r} needs true values: only the sim backend has them")

    def true_value(nodes: np.ndarray, n: np.ndarray) -> np.ndarray:
        states = [None if node == ROOT else search.states[int(node)] for node in nodes[0]]
        return ground_truth.values(states, int(n[0]))[None, :]

    return true_value


def replica_pools(settings, generators: list, rewards: list, calls) -> tuple[ReplicaPool, ReplicaPool]:
    """The generator and reward-model pools of a driver (``DriverConfig`` settings)."""
    health = (settings.replica_retry_s, settings.max_replica_failures, settings.replica_recovery_timeout_s)
    generation = ReplicaPool("generator", generators, calls, "generate", settings.max_batch_rollouts,
                             settings.max_inflight_batches, CacheAwareRouter(settings.affinity_spill_rollouts), *health)
    scoring = ReplicaPool("reward", rewards, calls, "score", settings.max_batch_scores, settings.max_inflight_batches,
                          None, *health)
    return generation, scoring


def within_window(active: list[SearchRecord], admitted: int, window: int | None) -> bool:
    """Whether the next search (place ``admitted`` in the order) is fewer than ``window`` places after
    the oldest one still running. Searches then finish at most that far out of order, which bounds
    what a job that writes results in order (``slg collect``'s shards and JSONL lines) holds while it waits."""
    return window is None or not active or admitted < min(search.order for search in active) + window


def replica_report(generators, rewards) -> dict:
    """Failures, replica processes lost, replicas back after a failure, replicas retired (two ``ReplicaHealth``)."""
    pools = (generators, rewards)
    return {"replica_failures": sum(h.failures_total for h in pools), "replicas_lost": sum(h.lost for h in pools),
            "replicas_rejoined": sum(h.rejoined for h in pools),
            "replicas_retired": {"generator": generators.retired, "reward": rewards.retired}}


def error_summary(error: BaseException) -> str:
    """The error's type and the first sentence of its message's last line (Ray puts the cause last)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    sentence = lines[-1].split(". ")[0] if lines else ""
    return f"{type(error).__name__}: {sentence}"


class DriverActor:
    """The driver as the session's Ray actor: only the methods the job calls, each handing on to a
    ``Driver`` held inside. Ray wraps every method of an actor's class for tracing, the ones its
    own code calls included (the driver's per-rollout methods: about 3 calls a rollout, 1 us each),
    so the class Ray sees holds only these."""

    def __init__(self, *args, **kwargs):
        self.driver = Driver(*args, **kwargs)
        tune_collector_for_the_run()


    def step(self, max_s: float | None = None) -> tuple[list[dict], dict]:
        return self.driver.step(max_s)

    def progress(self) -> dict:
        return self.driver.progress()

    def busy_fractions(self) -> dict[str, list[float]]:
        return self.driver.busy_fractions()

    def observer_report(self):
        return self.driver.observer_report()


def tune_collector_for_the_run() -> None:
    """Python's cyclic garbage collector, in a process that runs one driver. What is alive once the
    driver is set up (modules, Ray's state, the queued searches) lives as long as the run: frozen,
    the collector's full passes skip it, where each walked it all (about 0.1 s with Ray's objects).
    Young objects are collected every 100,000 net allocations of tracked objects (containers,
    instances), not 700: decoding answers and the policies' small arrays set one off every few
    rollouts. Together about 5 us of driver CPU a rollout, and none of the 0.1 s stalls. The
    garbage of the set-up is collected first, so that freezing does not keep it for the run."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
