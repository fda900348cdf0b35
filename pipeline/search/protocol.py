"""The seam between a search policy and whatever supplies rollouts: requests, rollouts, the ledger.

Pure numpy. A policy runs B independent episodes at once (B = 1 for one prompt in the Ray driver,
thousands in offline replay) and talks in rounds: it asks for rollouts from nodes, is told their
rewards, and asks again, until it has spent its budget. A node is the prompt (``ROOT``) or a
state, named by the index of the root rollout whose first T tokens it is (the search has one
layer, so only root rollouts ever become states).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROOT = -1      # the prompt itself
NO_NODE = -2   # nothing asked of this episode in this request


class BudgetExceededError(RuntimeError):
    """A policy asked for more rollouts than its budget: a bug in the policy, never user input."""


@dataclass(frozen=True)
class Request:
    """For each episode b: ``count[b]`` rollouts from node ``node[b]`` (nothing where count is 0)."""

    node: np.ndarray   # (B,) int: ROOT, a root-rollout index, or NO_NODE
    count: np.ndarray  # (B,) int >= 0

    @classmethod
    def uniform(cls, node: int, count: int, batch_size: int) -> Request:
        return cls(np.full(batch_size, node, dtype=np.int64), np.full(batch_size, count, dtype=np.int64))

    @classmethod
    def per_episode(cls, node: np.ndarray, count) -> Request:
        node = np.asarray(node, dtype=np.int64)
        count = np.broadcast_to(np.asarray(count, dtype=np.int64), node.shape)
        return cls(node, np.where(node == NO_NODE, 0, count))


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
    state_score: np.ndarray | None = None  # (B, max count) float: the reward model's score of the prefix alone, NaN if none


class EpisodeLedger:
    """Counts what each episode spent and keeps its best rollout (the answer, for every method).

    The answer of an episode is the single highest-reward rollout among all it generated
    (docs/method.md, SLG search, step 6; for BoN the same rule). Ties keep the earliest rollout.
    """

    def __init__(self, budget: int, batch_size: int):
        self.budget = budget
        self.spent = np.zeros(batch_size, dtype=np.int64)
        self.best_reward = np.full(batch_size, -np.inf)
        self.best_correct = np.zeros(batch_size, dtype=bool)
        self.has_correct = False

    def charge(self, requests: list[Request]) -> None:
        total = self.spent + sum(r.count for r in requests)
        if (total > self.budget).any():
            b = int(np.argmax(total > self.budget))
            raise BudgetExceededError(f"episode {b} would spend {int(total[b])} rollouts, budget is {self.budget}")
        self.spent = total

    def record(self, results: list[Rollouts]) -> None:
        for rollouts in results:
            if rollouts.rewards.shape[1] == 0:
                continue
            filled = np.where(np.isnan(rollouts.rewards), -np.inf, rollouts.rewards)
            best = filled.argmax(axis=1)
            value = filled[np.arange(filled.shape[0]), best]
            better = value > self.best_reward
            self.best_reward = np.where(better, value, self.best_reward)
            if rollouts.correct is not None:
                self.has_correct = True
                correct = rollouts.correct[np.arange(filled.shape[0]), best]
                self.best_correct = np.where(better, correct, self.best_correct)
