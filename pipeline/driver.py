"""The driver: runs one search policy per (prompt, method, budget) against the engine replicas.

It asks each search for its next round, turns the requests into seeded rollout requests, sends
them to generator replicas (a state's rollouts to a replica whose prefix cache holds it, spreading
to another only when that one falls far behind; everything else to the least-loaded one), sends
finished rollouts on to the reward replicas as they arrive (generation and scoring overlap), fills
each search's round with the rewards, and tells the policy. Many searches run at once, so while
one waits at its round barrier others keep the replicas busy. The driver holds all search state
(policies, states, ledgers); replicas hold none.

It is a plain class: ``slg run`` makes it a Ray actor (``ray.remote(Driver)``) and calls
:meth:`Driver.step` until it reports everything done; tests run it in-process on local replicas.
Seeds derive from (run seed, prompt id, node, index within the node), never from dispatch order,
so results do not depend on the number of replicas, and methods share rollouts (root rollout k
of a prompt is the same rollout for every method and budget: common random numbers).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections import defaultdict, deque

import numpy as np

from actors.interfaces import PromptInput, Rollout, RolloutRequest, Score, ScoreRequest, StatePrefix
from pipeline.config import SearchConfig
from pipeline.policies import policy_class
from pipeline.policy import NO_NODE, ROOT, BudgetExceededError, Rollouts
from pipeline.replicas import LocalCalls, RayCalls


def derive_seed(*parts) -> int:
    """A 31-bit seed from its parts, stable across processes and machines (never ``hash()``)."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def node_name(node: int) -> str:
    return "root" if node == ROOT else f"s{node}"


class _Slot:
    """One request of a round: ``count`` rollouts from ``node``, filled in as scores arrive."""

    __slots__ = ("node", "count", "rewards", "can_branch", "correct", "texts")

    def __init__(self, node: int, count: int, keep_texts: bool = False):
        self.node, self.count = node, count
        self.rewards = np.full(count, np.nan)
        self.can_branch = np.zeros(count, dtype=bool)
        self.correct = np.zeros(count, dtype=bool)
        self.texts = [""] * count if keep_texts else None


class _Search:
    """The driver's record of one (prompt, method, budget) search."""

    def __init__(self, prompt: PromptInput, method: str, budget: int, policy):
        self.prompt, self.method, self.budget, self.policy = prompt, method, budget, policy
        self.root_count = 0
        self.requested = 0
        self.node_counts: dict[int, int] = defaultdict(int)
        self.states: dict[int, StatePrefix] = {}
        self.slots: list[_Slot] = []
        self.waiting = 0
        self.sequence = itertools.count()
        self.started = time.perf_counter()
        self.ledger = {"rollouts": 0, "tokens_generated": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0,
                       "rm_tokens": 0, "empty_rollouts": 0, "dropped_scores": 0}
        self.best = (-math.inf, 0, None, None, None)  # (reward, -sequence, text, correct, node)
        self.any_correct: bool | None = None
        self.votes: dict[str, list] = {}  # answer -> [count, -first sequence, correct]
        self.samples: dict[str, list] = {}  # node -> [rewards, correct flags, texts] (record_samples only)


class _Item:
    """One rollout on its way: generated, then scored. ``call`` is the call now responsible for it:
    answers from any other call (one re-sent after a failure, then answering late) are ignored."""

    __slots__ = ("search", "slot", "position", "node", "root_index", "sequence", "rollout", "call", "request")

    def __init__(self, search, slot, position, node, root_index, sequence, request):
        self.search, self.slot, self.position, self.node = search, slot, position, node
        self.root_index, self.sequence, self.rollout = root_index, sequence, None
        self.call, self.request = None, request


class _Call:
    __slots__ = ("kind", "replica", "batch", "started")

    def __init__(self, kind: str, replica: int, batch: list):
        self.kind, self.replica, self.batch, self.started = kind, replica, batch, time.perf_counter()


class ReplicaFailedError(RuntimeError):
    """A replica kept failing (or never started): the run stops instead of retrying forever."""


class Driver:
    def __init__(self, prompts: list[PromptInput], methods: list[str], budgets: list[int], search: SearchConfig,
                 seed: int, generators: list, rewards: list, settings, world=None, skip=(),
                 nonfinite: str = "stop", use_ray: bool = True, record_samples: bool = False, record_texts: bool = False,
                 record_requests: bool = False):
        self.settings = settings
        self.seed = seed
        self.search_config = search
        self.world = world
        self.nonfinite = nonfinite
        self.record_samples = record_samples  # keep every reward per node (slg collect writes banks)
        self.record_texts = record_samples and record_texts  # and every response text (held until the search ends)
        self.record_requests = record_requests
        self.requests_log: list[RolloutRequest] = []
        self.generators, self.rewards = generators, rewards
        self.calls = RayCalls() if use_ray else LocalCalls()
        skip = {tuple(k) for k in skip}
        self.queue = deque((p, m, n) for p in prompts for n in budgets for m in methods
                           if (p.prompt_id, m, n) not in skip)
        self.total = len(self.queue)
        self.active: list[_Search] = []
        self.items: dict[int, _Item] = {}
        self.request_ids = itertools.count()
        self.gen_queues = [deque() for _ in generators]
        self.gen_inflight = [0] * len(generators)
        self.gen_inflight_rollouts = [0] * len(generators)  # the load measure of least-loaded dispatch
        self.score_queue: deque[ScoreRequest] = deque()
        self.score_inflight = [0] * len(rewards)
        self.affinity: dict[tuple[str, int], list[int]] = {}  # state -> replicas whose cache holds it
        self.pending: dict = {}  # call token -> _Call
        self.replicas = {"generate": generators, "score": rewards}
        self.failures = {"generate": [0] * len(generators), "score": [0] * len(rewards)}  # in a row
        self.down_until = {"generate": [0.0] * len(generators), "score": [0.0] * len(rewards)}
        self.recovering = {"generate": [False] * len(generators), "score": [False] * len(rewards)}
        self.replica_failures_total = 0
        self.busy_s = {"generate": [0.0] * len(generators), "score": [0.0] * len(rewards)}
        self.busy_since = {"generate": [0.0] * len(generators), "score": [0.0] * len(rewards)}
        self.counters = {"searches_done": 0, "rollouts_generated": 0, "rollouts_scored": 0, "tokens_generated": 0,
                         "prompt_tokens": 0, "cached_prompt_tokens": 0, "rm_tokens": 0,
                         "state_prompt_tokens": 0, "state_cached_tokens": 0}
        self.driver_busy_s = 0.0
        self.started = time.perf_counter()

    # --- the loop --------------------------------------------------------------------------------

    def step(self, max_s: float | None = None) -> tuple[list[dict], dict]:
        """Work for up to ``max_s`` seconds (None: until done); return finished results and progress."""
        deadline = None if max_s is None else time.perf_counter() + max_s
        finished: list[dict] = []
        while True:
            busy_from = time.perf_counter()
            self._admit(finished)
            self._dispatch()
            self.driver_busy_s += time.perf_counter() - busy_from
            if not self.pending:
                if not self._waiting_for_replicas() or (deadline is not None and time.perf_counter() >= deadline):
                    break
                time.sleep(0.05)
                continue
            timeout = 1.0 if deadline is None else max(0.0, deadline - time.perf_counter())
            if self.settings.call_timeout_s:
                timeout = min(timeout, self.settings.call_timeout_s)
            done = self.calls.wait(list(self.pending), timeout)
            busy_from = time.perf_counter()
            for token, result, error in done:
                call = self.pending.pop(token)
                if error is not None:
                    self._on_failure(token, call, error)
                    continue
                self.failures[call.kind][call.replica] = 0
                self.recovering[call.kind][call.replica] = False
                if call.kind == "generate":
                    self._mark_inflight("generate", call.replica, -1)
                    self.gen_inflight_rollouts[call.replica] -= len(call.batch)
                    self._on_rollouts(token, result)
                else:
                    self._mark_inflight("score", call.replica, -1)
                    self._on_scores(token, result, finished)
            self._expire_hung_calls()
            self.driver_busy_s += time.perf_counter() - busy_from
            if deadline is not None and time.perf_counter() >= deadline:
                break
        return finished, self.progress()

    # --- failures -------------------------------------------------------------------------------

    def _on_failure(self, token, call: _Call, error: BaseException) -> None:
        verdict = self.calls.classify_failure(error)
        if verdict == "error":
            raise RuntimeError(f"{call.kind} replica {call.replica} failed on a batch of {len(call.batch)}: "
                               f"{_first_line(error)}") from error
        # While Ray restarts a replica its calls fail as "restarting": one incident, counted once.
        counts = verdict == "died" or not self.recovering[call.kind][call.replica]
        self._replica_failed(token, call, _first_line(error), counts=counts)

    def _expire_hung_calls(self) -> None:
        """A call with no answer within ``call_timeout_s``: its replica is treated as failed."""
        limit = self.settings.call_timeout_s
        if not limit:
            return
        now = time.perf_counter()
        for token, call in list(self.pending.items()):
            if now - call.started > limit:
                del self.pending[token]
                restarting = self.recovering[call.kind][call.replica]  # already being restarted: wait
                if not restarting:
                    self.calls.restart(self.replicas[call.kind][call.replica])
                self._replica_failed(token, call, f"no answer within driver.call_timeout_s={limit:g}",
                                     counts=not restarting)

    def _replica_failed(self, token, call: _Call, reason: str, counts: bool = True) -> None:
        """Count the failure, rest the replica a while, and re-send its work elsewhere (same seeds)."""
        kind, replica = call.kind, call.replica
        if counts:
            self.replica_failures_total += 1
            self.failures[kind][replica] += 1
            if self.failures[kind][replica] > self.settings.max_replica_failures:
                raise ReplicaFailedError(f"{'generator' if kind == 'generate' else 'reward'} replica {replica} "
                                         f"failed {self.failures[kind][replica]} times in a row; last: {reason}")
        self.recovering[kind][replica] = True
        rest = self.settings.replica_retry_s * max(1, self.failures[kind][replica])
        self.down_until[kind][replica] = time.perf_counter() + rest
        if kind == "generate":
            self._mark_inflight("generate", replica, -1)
            self.gen_inflight_rollouts[replica] -= len(call.batch)
            stranded = [r for r in call.batch if self._owned(r.request_id, token)] + list(self.gen_queues[replica])
            self.gen_queues[replica].clear()
            self.affinity = {k: kept for k, v in self.affinity.items() if (kept := [r for r in v if r != replica])}
            for request in stranded:
                self.items[request.request_id].call = None
                target = self._replica_for(request.prompt.prompt_id, self.items[request.request_id].node)
                self.gen_queues[target].append(request)
        else:
            self._mark_inflight("score", replica, -1)
            for request in reversed(call.batch):
                if self._owned(request.request_id, token):
                    self.items[request.request_id].call = None
                    self.score_queue.appendleft(request)

    def _owned(self, request_id: int, token) -> bool:
        item = self.items.get(request_id)
        return item is not None and item.call is token

    def _usable(self, kind: str, replica: int) -> bool:
        return self.down_until[kind][replica] <= time.perf_counter()

    def _waiting_for_replicas(self) -> bool:
        """Work is queued but every replica that could take it is resting after a failure."""
        return any(self.gen_queues) or bool(self.score_queue)

    @property
    def done(self) -> bool:
        return not self.queue and not self.active and not self.pending

    def progress(self) -> dict:
        elapsed = time.perf_counter() - self.started
        return {**self.counters, "searches_total": self.total, "elapsed_s": elapsed, "done": self.done,
                "rollouts_per_s": self.counters["rollouts_scored"] / elapsed if elapsed > 0 else 0.0,
                "tokens_per_s": self.counters["tokens_generated"] / elapsed if elapsed > 0 else 0.0,
                "driver_busy_s": self.driver_busy_s, "replica_failures": self.replica_failures_total}

    def _admit(self, finished: list[dict]) -> None:
        while self.queue and len(self.active) < self.settings.max_concurrent_prompts:
            prompt, method, budget = self.queue.popleft()
            cls = policy_class(method)
            search = _Search(prompt, method, budget, None)
            true_value = self._true_value_of(search) if cls.needs_true_values else None
            search.policy = cls(budget, 1, self.search_config,
                                rng=np.random.default_rng(derive_seed(self.seed, prompt.prompt_id, method, budget)),
                                true_value=true_value)
            self.active.append(search)
            self._plan(search, finished)

    def _plan(self, search: _Search, finished: list[dict]) -> None:
        """Turn the policy's next round into queued rollout requests (or finish the search)."""
        while True:
            requests = search.policy.plan()
            if not requests:
                self._finish(search, finished)
                return
            search.slots = [_Slot(int(r.node[0]), int(r.count[0]), self.record_texts) for r in requests]
            search.requested += sum(slot.count for slot in search.slots)
            if search.requested > search.budget:
                raise BudgetExceededError(f"{search.method} asked for {search.requested} rollouts of prompt "
                                          f"{search.prompt.prompt_id!r}, budget is {search.budget}")
            for slot in search.slots:
                for position in range(slot.count):
                    self._queue_rollout(search, slot, position)
            search.waiting = sum(s.count for s in search.slots)
            if search.waiting:
                return
            search.policy.observe(self._round_results(search))  # a round that asked for nothing

    def _queue_rollout(self, search: _Search, slot: _Slot, position: int) -> None:
        prompt = search.prompt
        if slot.node == ROOT:
            index = root_index = search.root_count
            search.root_count += 1
            state = None
        else:
            if slot.node not in search.states:
                raise RuntimeError(f"policy asked to continue state {slot.node}, which is not a state")
            root_index, state = None, search.states[slot.node]
            index = search.node_counts[slot.node]
            search.node_counts[slot.node] += 1
        request_id = next(self.request_ids)
        seed = derive_seed(self.seed, prompt.prompt_id, node_name(slot.node), index)
        request = RolloutRequest(request_id, prompt, state, seed)
        self.items[request_id] = _Item(search, slot, position, slot.node, root_index, next(search.sequence), request)
        self.gen_queues[self._replica_for(prompt.prompt_id, slot.node)].append(request)
        if self.record_requests:
            self.requests_log.append(request)

    def _replica_for(self, prompt_id: str, node: int) -> int:
        """Rollouts from the prompt go to the least-loaded replica. A state's go to the least loaded
        of the replicas whose prefix cache holds it, unless that one has more than
        ``affinity_spill_rollouts`` rollouts waiting beyond the least-loaded replica: then to that
        one, which holds the state from then on too (a round's rollouts of one state would
        otherwise pile up on one replica while the others run dry)."""
        now, down_until = time.perf_counter(), self.down_until["generate"]
        loads = [len(q) + inflight + (10**12 if down > now else 0)  # called per rollout: kept lean
                 for q, inflight, down in zip(self.gen_queues, self.gen_inflight_rollouts, down_until)]
        least = min(range(len(loads)), key=loads.__getitem__)  # a Python min: numpy costs more on short lists
        if node == ROOT:
            return least
        holders = self.affinity.get((prompt_id, node))
        if holders is None:
            self.affinity[(prompt_id, node)] = [least]
            return least
        home = min(holders, key=loads.__getitem__)
        spill = self.settings.affinity_spill_rollouts
        if spill and loads[home] - loads[least] > spill:
            holders.append(least)
            return least
        return home

    def _dispatch(self) -> None:
        limit = self.settings.max_inflight_batches
        for replica, queue in enumerate(self.gen_queues):
            while queue and self.gen_inflight[replica] < limit and self._usable("generate", replica):
                batch = [queue.popleft() for _ in range(min(len(queue), self.settings.max_batch_rollouts))]
                self._submit("generate", replica, batch)
                self._mark_inflight("generate", replica, +1)
        while self.score_queue:
            usable = [r for r in range(len(self.rewards)) if self._usable("score", r)]
            if not usable:
                break
            replica = min(usable, key=lambda r: self.score_inflight[r])
            if self.score_inflight[replica] >= limit:
                break
            size = min(len(self.score_queue), self.settings.max_batch_scores)
            self._submit("score", replica, [self.score_queue.popleft() for _ in range(size)])
            self._mark_inflight("score", replica, +1)

    def _mark_inflight(self, kind: str, replica: int, change: int) -> None:
        """Count calls in flight; a replica is busy while it has at least one (its busy time)."""
        inflight = self.gen_inflight if kind == "generate" else self.score_inflight
        before = inflight[replica]
        inflight[replica] += change
        if before == 0 and inflight[replica] > 0:
            self.busy_since[kind][replica] = time.perf_counter()
        elif before > 0 and inflight[replica] == 0:
            self.busy_s[kind][replica] += time.perf_counter() - self.busy_since[kind][replica]

    def busy_fractions(self) -> dict[str, list[float]]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        now = time.perf_counter()
        out = {}
        for kind, inflight in (("generate", self.gen_inflight), ("score", self.score_inflight)):
            out[kind] = [(self.busy_s[kind][r] + (now - self.busy_since[kind][r] if inflight[r] else 0.0)) / elapsed
                         for r in range(len(inflight))]
        return out

    def recorded_requests(self) -> list[RolloutRequest]:
        """Every rollout request in the order it was first queued (``record_requests``): the token
        workload ``slg bench`` replays on a bare engine."""
        return self.requests_log

    def _submit(self, kind: str, replica: int, batch: list) -> None:
        if kind == "generate":
            self.gen_inflight_rollouts[replica] += len(batch)
        token = self.calls.submit(self.replicas[kind][replica], "generate" if kind == "generate" else "score", batch)
        self.pending[token] = _Call(kind, replica, batch)
        for request in batch:
            self.items[request.request_id].call = token

    def _on_rollouts(self, token, rollouts: list[Rollout]) -> None:
        for rollout in rollouts:
            if not self._owned(rollout.request_id, token):
                continue  # a late answer to a call already re-sent elsewhere: counted once, there
            item = self.items[rollout.request_id]
            item.rollout = rollout
            search = item.search
            search.ledger["rollouts"] += 1
            search.ledger["tokens_generated"] += rollout.num_generated_tokens
            search.ledger["prompt_tokens"] += rollout.num_prompt_tokens
            search.ledger["cached_prompt_tokens"] += rollout.num_cached_tokens
            search.ledger["empty_rollouts"] += rollout.num_generated_tokens == 0
            self.counters["rollouts_generated"] += 1
            self.counters["tokens_generated"] += rollout.num_generated_tokens
            self.counters["prompt_tokens"] += rollout.num_prompt_tokens
            self.counters["cached_prompt_tokens"] += rollout.num_cached_tokens
            if item.node != ROOT:
                self.counters["state_prompt_tokens"] += rollout.num_prompt_tokens
                self.counters["state_cached_tokens"] += rollout.num_cached_tokens
            if item.root_index is not None and rollout.state is not None:
                search.states[item.root_index] = rollout.state
                item.slot.can_branch[item.position] = True
            item.call = None
            self.score_queue.append(ScoreRequest(rollout.request_id, search.prompt, rollout.response_text,
                                                 rollout.sim_reward))

    def _on_scores(self, token, scores: list[Score], finished: list[dict]) -> None:
        for score in scores:
            if not self._owned(score.request_id, token):
                continue
            item = self.items.pop(score.request_id)
            search, slot, rollout = item.search, item.slot, item.rollout
            reward = float(score.reward)
            search.ledger["rm_tokens"] += score.num_tokens
            self.counters["rollouts_scored"] += 1
            self.counters["rm_tokens"] += score.num_tokens
            if not math.isfinite(reward):
                if self.nonfinite == "stop":
                    raise ValueError(f"the reward model returned {reward} for prompt {search.prompt.prompt_id!r}, "
                                     f"node {node_name(item.node)} (set reward.nonfinite=drop to drop such rollouts)")
                search.ledger["dropped_scores"] += 1
            else:
                slot.rewards[item.position] = reward
                if slot.texts is not None:
                    slot.texts[item.position] = rollout.response_text
                if rollout.correct is not None:
                    slot.correct[item.position] = rollout.correct
                    search.any_correct = bool(search.any_correct) or rollout.correct
                if rollout.answer is not None:
                    votes = search.votes.setdefault(rollout.answer, [0, -item.sequence, rollout.correct])
                    votes[0] += 1
                    votes[1] = max(votes[1], -item.sequence)  # ties go to the answer planned first
                candidate = (reward, -item.sequence, rollout.response_text, rollout.correct, item.node)
                if candidate[:2] > search.best[:2]:
                    search.best = candidate
            search.waiting -= 1
            if search.waiting == 0:
                if self.record_samples:
                    for s in search.slots:
                        if s.node == NO_NODE:  # a state the policy could not have (its root rollout was too short)
                            continue
                        record = search.samples.setdefault(node_name(s.node), [[], [], []])
                        kept = ~np.isnan(s.rewards)
                        record[0] += s.rewards[kept].tolist()
                        record[1] += s.correct[kept].tolist()
                        if s.texts is not None:
                            record[2] += [text for text, keep in zip(s.texts, kept) if keep]
                search.policy.observe(self._round_results(search))
                self._plan(search, finished)

    def _round_results(self, search: _Search) -> list[Rollouts]:
        return [Rollouts(s.rewards[None, :], s.can_branch[None, :], s.correct[None, :]) for s in search.slots]

    def _finish(self, search: _Search, finished: list[dict]) -> None:
        self.active.remove(search)
        self.counters["searches_done"] += 1
        policy = search.policy
        best_reward, _, text, correct, best_node = search.best
        prediction = float(policy.selected_prediction[0])
        majority = max(search.votes.items(), key=lambda kv: (kv[1][0], kv[1][1]), default=None)
        finished.append({
            "prompt_id": search.prompt.prompt_id, "method": search.method, "budget": search.budget,
            **search.ledger,
            "best_reward": best_reward if math.isfinite(best_reward) else None,
            "selected": node_name(int(policy.selected[0])),
            "predicted_value": prediction if math.isfinite(prediction) else None,
            "num_states": len(search.states),
            "correct": correct, "pass_at_n": search.any_correct,
            "majority_answer": None if majority is None else majority[0],
            # graded rollouts but no readable answer among them: the vote has no right answer
            "majority_correct": majority[1][2] if majority is not None else (False if search.any_correct is not None else None),
            "best_node": None if best_node is None else node_name(best_node),
            "answer": text,
            "wall_s": time.perf_counter() - search.started,
            **({"samples": search.samples,
                "state_texts": {node_name(node): state.text for node, state in search.states.items()}}
               if self.record_samples else {}),
        })

    def _true_value_of(self, search: _Search):
        if self.world is None:
            raise ValueError(f"method {search.method!r} needs true values: only the sim backend has them")

        def true_value(nodes: np.ndarray, n: np.ndarray) -> np.ndarray:
            out = np.empty(nodes.shape)
            for j, node in enumerate(nodes[0]):
                if node == ROOT:
                    out[0, j] = self.world.prompt_value(int(n[0]))
                else:
                    out[0, j] = self.world.state_value(np.array([search.states[int(node)].latent]), int(n[0]))[0]
            return out

        return true_value


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"
