"""The seam between a search policy and whatever supplies rollouts: requests, rollouts, the ledger.

Pure numpy. A policy runs B independent episodes at once (one per search of a group in the Ray
driver, ``driver.policy_batch`` at most; thousands in offline replay) and talks in rounds: it asks
for rollouts from nodes, is told their rewards, and asks again, until it has spent its budget. A
node is the prompt (``ROOT``) or a state, named by the index of the root rollout whose first T
tokens it is (the search has one layer, so only root rollouts ever become states).

Responses can also grow in chunks (``spec_rejection``): a request with ``max_new_tokens`` generates
at most that many tokens per rollout, and a ``grow`` request continues node k's own partial response
(root rollout k, as far as it has grown) in place, rather than drawing fresh rollouts from its state.
A chunk's reward is the reward model's score of the response so far, and ``Rollouts.finished`` says
whether the response ended; only finished responses can be an episode's answer. The budget counts
responses started: continuing one is not another rollout (its tokens are counted, ``num_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROOT = -1      # the prompt itself
NO_NODE = -2   # nothing asked of this episode in this request


def _check_chunk(max_new_tokens) -> None:
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")


class BudgetExceededError(RuntimeError):
    """A policy asked for more rollouts than its budget: a bug in the policy, never user input."""


@dataclass(frozen=True)
class Request:
    """For each episode b: ``count[b]`` rollouts from node ``node[b]`` (nothing where count is 0)."""

    node: np.ndarray   # (B,) int: ROOT, a root-rollout index, or NO_NODE
    count: np.ndarray  # (B,) int >= 0
    max_new_tokens: int | None = None  # each rollout generates at most this many tokens (a chunk); None: whole responses
    grow: bool = False  # continue node k's own partial response (count 1) instead of fresh rollouts from its state
    # the reward model also scores the prefix alone of each new state this request's root rollouts reveal
    # (``Rollouts.state_score``): one more reward-model read per state, so only where the policy reads it.
    # A state's prefix is scored once, when a request that asks first meets the state (an earlier request
    # that did not ask leaves it unscored): so the driver scores it, and so a replay counts its tokens
    score_prefixes: bool = False

    @classmethod
    def uniform(cls, node: int, count: int, batch_size: int, max_new_tokens: int | None = None,
                score_prefixes: bool = False) -> Request:
        _check_chunk(max_new_tokens)
        return cls(np.full(batch_size, node, dtype=np.int64), np.full(batch_size, count, dtype=np.int64), max_new_tokens,
                   score_prefixes=score_prefixes)

    @classmethod
    def per_episode(cls, node: np.ndarray, count, max_new_tokens: int | None = None,
                    score_prefixes: bool = False) -> Request:
        _check_chunk(max_new_tokens)
        node = np.asarray(node, dtype=np.int64)
        count = np.asarray(count, dtype=np.int64)
        if count.shape != node.shape:  # (a scalar count: broadcast only then, a cost on the driver's one-episode requests)
            count = np.broadcast_to(count, node.shape)
        return cls(node, np.where(node == NO_NODE, 0, count), max_new_tokens, score_prefixes=score_prefixes)

    @classmethod
    def grow_each(cls, nodes: np.ndarray, max_new_tokens: int) -> list[Request]:
        """One grow request per column of ``nodes`` (B, W): episode b's response ``nodes[b, j]`` (or
        NO_NODE) grows by a chunk of ``max_new_tokens`` (checked once for all: the driver builds many)."""
        _check_chunk(max_new_tokens)
        nodes = np.asarray(nodes, dtype=np.int64)
        if max_new_tokens is None or ((nodes < 0) & (nodes != NO_NODE)).any():
            raise ValueError("a grow request continues a root rollout's partial response (an index >= 0), by a chunk")
        counts = (nodes != NO_NODE).astype(np.int64)
        return [cls(nodes[:, j], counts[:, j], max_new_tokens, True) for j in range(nodes.shape[1])]

    @property
    def new_rollouts(self) -> np.ndarray:
        """(B,) rollouts this request starts: its counts, or none for a grow request (it continues responses)."""
        return np.zeros_like(self.count) if self.grow else self.count


@dataclass(frozen=True)
class Rollouts:
    """What one request produced: rewards (B, max count), NaN beyond each episode's count.

    ``state_index`` says which root rollouts share a state: for a rollout that can branch, the index
    of the episode's first root rollout with the same prefix (its own index when the prefix is new);
    -1 elsewhere. Two root rollouts with one prefix are one state, and each is a sample of it. None
    where the source cannot tell (every root rollout is then a state of its own).
    """

    rewards: np.ndarray
    can_branch: np.ndarray   # (B, max count) bool: long enough (>= T tokens) to become a state
    correct: np.ndarray | None = None  # (B, max count) bool where answers can be graded
    state_index: np.ndarray | None = None  # (B, max count) int: see above
    state_score: np.ndarray | None = None  # (B, max count) float: the reward model's score of the prefix alone, NaN if
    # none; None where the request did not ask (``Request.score_prefixes``) or the source has no prefix scores
    finished: np.ndarray | None = None  # (B, max count) bool: the response ended (None: all did); else ``rewards`` is a partial score
    num_tokens: np.ndarray | None = None  # (B, max count) generated tokens of each rollout (0 beyond the count); None: not counted
    rm_tokens: np.ndarray | None = None   # (B, max count) tokens the reward model read to score each; None: not counted
    prefix_reads: np.ndarray | None = None  # (B, max count) bool: the reward model also read this rollout's state prefix
    # alone (its tokens are in rm_tokens; it is one more reward-model item); None: none read


class EpisodeLedger:
    """Counts what each episode spent and keeps its best rollout (the answer, for every method).

    The answer of an episode is the single highest-reward rollout among all it generated
    (docs/method.md, SLG search, step 6; for BoN the same rule), among finished responses only (a
    partial response's score is not an answer). Ties keep the earliest rollout. ``spent`` counts
    rollouts (responses started), ``tokens`` the generated tokens and ``rm_tokens`` the tokens the
    reward model read, where the source counts them, and ``scored`` the reward model's items.
    """

    def __init__(self, budget: int, batch_size: int):
        self.budget = budget
        self.spent = np.zeros(batch_size, dtype=np.int64)
        self.tokens = np.zeros(batch_size, dtype=np.int64)
        self.rm_tokens = np.zeros(batch_size, dtype=np.int64)
        self.scored = np.zeros(batch_size, dtype=np.int64)
        self.best_reward = np.full(batch_size, -np.inf)
        self.best_correct = np.zeros(batch_size, dtype=bool)
        self.has_correct = False

    def charge(self, requests: list[Request]) -> None:
        total = self.spent + sum(r.new_rollouts for r in requests)
        if (total > self.budget).any():
            b = int(np.argmax(total > self.budget))
            raise BudgetExceededError(f"episode {b} would spend {int(total[b])} rollouts, budget is {self.budget}")
        self.spent = total

    def record(self, results: list[Rollouts]) -> None:
        for rollouts in results:
            if rollouts.rewards.shape[1] == 0:
                continue
            self.scored += (~np.isnan(rollouts.rewards)).sum(axis=1)  # NaN: nothing asked there (or a dropped score)
            if rollouts.prefix_reads is not None:
                self.scored += rollouts.prefix_reads.sum(axis=1)
            if rollouts.num_tokens is not None:
                self.tokens += rollouts.num_tokens.sum(axis=1)
            if rollouts.rm_tokens is not None:
                self.rm_tokens += rollouts.rm_tokens.sum(axis=1)
            answers = rollouts.rewards if rollouts.finished is None else np.where(rollouts.finished, rollouts.rewards, np.nan)
            filled = np.where(np.isnan(answers), -np.inf, answers)
            best = filled.argmax(axis=1)
            value = filled[np.arange(filled.shape[0]), best]
            better = value > self.best_reward
            self.best_reward = np.where(better, value, self.best_reward)
            if rollouts.correct is not None:
                self.has_correct = True
                correct = rollouts.correct[np.arange(filled.shape[0]), best]
                self.best_correct = np.where(better, correct, self.best_correct)


def in_lockstep(*paths):
    """Generators of request rounds for disjoint episodes, run as one: each round is their rounds
    side by side, and each gets its own part of the results."""
    pending = []
    for path in paths:
        requests = next(path, None)
        if requests is not None:
            pending.append((path, requests))
    while pending:
        results = yield [r for _, requests in pending for r in requests]
        following, start = [], 0
        for path, requests in pending:
            mine, start = results[start:start + len(requests)], start + len(requests)
            try:
                following.append((path, path.send(mine)))
            except StopIteration:
                pass
        pending = following
