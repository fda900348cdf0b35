"""Tokens offline: how long the responses of a world or a bank are, and responses that grow in chunks.

Pure numpy. ``TokenModel`` gives every offline rollout a length in tokens, so that replay counts
what each method generates and what its reward model reads, as the driver's ledger does live:

- worlds: the simulated engine's lengths (``actors/sim.py``): a response from the prompt is its
  state's T tokens plus a geometric number of tokens (mean ``mean_response_tokens - T``, so
  ``mean_response_tokens`` in all); a rollout from a state generates only the geometric part;
- banks, which record no lengths: every response from the prompt is ``mean_response_tokens`` long,
  every continuation of a state ``mean_response_tokens - T`` (a documented constant, the sim's means).

The reward model reads the prompt (``prompt_tokens``, the sim's 32 for an empty prompt) and the
response so far; scoring a state's prefix alone reads the prompt and T tokens.

``GrowingResponses`` holds the responses of ``spec_rejection``: each root rollout's final reward,
its length and how far it has grown, so that a chunk continues exactly that response and its
partial score is a reading of that final reward (``pipeline.offline.worlds``, "Partial responses").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenModel:
    prompt_tokens: int = 32             # what the reward model reads of the prompt
    state_tokens: int = 100             # T: a state is the first T tokens of a response
    mean_response_tokens: int = 400     # a whole response from the prompt, state included, on average
    random_lengths: bool = True         # geometric lengths as the sim engine's (worlds); False: the means (banks)

    def __post_init__(self):
        if not 1 <= self.state_tokens < self.mean_response_tokens or self.prompt_tokens < 0:
            raise ValueError(f"token model needs 1 <= state_tokens < mean_response_tokens and prompt_tokens >= 0, "
                             f"got {self}")

    def lengths(self, rng: np.random.Generator, from_root: np.ndarray) -> np.ndarray:
        """Generated tokens of rollouts (int64, the shape of ``from_root``): whole responses where
        ``from_root``, continuations of a state elsewhere."""
        tail = self.mean_response_tokens - self.state_tokens
        if self.random_lengths:
            tail_tokens = rng.geometric(1.0 / tail, size=np.shape(from_root))
        else:
            tail_tokens = np.full(np.shape(from_root), tail)
        return np.where(from_root, self.state_tokens, 0) + tail_tokens.astype(np.int64)


class GrowingResponses:
    """The final reward, its grade, the length and the tokens so far of each root rollout of B
    episodes, in root order (``correct`` None where the source grades nothing)."""

    def __init__(self, batch_size: int):
        self.final = np.empty((batch_size, 0))
        self.length = np.empty((batch_size, 0), dtype=np.int64)
        self.grown = np.empty((batch_size, 0), dtype=np.int64)
        self.correct: np.ndarray | None = None

    def add(self, final: np.ndarray, length: np.ndarray, grown: np.ndarray, correct: np.ndarray | None) -> None:
        if correct is not None and self.correct is None:
            self.correct = np.zeros(self.final.shape, dtype=bool)
        if self.correct is not None:
            self.correct = np.concatenate([self.correct, np.zeros(final.shape, bool) if correct is None else correct], axis=1)
        self.final = np.concatenate([self.final, final], axis=1)
        self.length = np.concatenate([self.length, length], axis=1)
        self.grown = np.concatenate([self.grown, grown], axis=1)

    def reorder(self, order: np.ndarray) -> None:
        """Columns permuted per episode, as the source keeps its root latents left-aligned."""
        for name in ("final", "length", "grown", "correct"):
            if getattr(self, name) is not None:
                setattr(self, name, np.take_along_axis(getattr(self, name), order, axis=1))

    def grow(self, node: np.ndarray, chunk: int, read: Callable) -> tuple:
        """Response ``node[b]`` of each episode (NO_NODE: none) grows by up to ``chunk`` tokens: (reported
        score, finished, new tokens, tokens so far, correct or None), each (B, 1); a response is graded
        once it has finished. ``read(final, fraction)`` is a partial reading."""
        asked = node >= 0
        if (node[asked] >= self.final.shape[1]).any():
            raise ValueError(f"no response {int(node.max())} to continue: only {self.final.shape[1]} started")
        rows, column = np.flatnonzero(asked), node[asked]
        if (self.grown[rows, column] >= self.length[rows, column]).any():
            raise ValueError("asked to continue a response that has finished")
        new = np.minimum(chunk, self.length[rows, column] - self.grown[rows, column])
        self.grown[rows, column] += new
        score, finished, tokens, so_far = (np.full(len(node), np.nan), np.zeros(len(node), bool),
                                           np.zeros(len(node), np.int64), np.zeros(len(node), np.int64))
        finished[rows] = self.grown[rows, column] == self.length[rows, column]
        final = self.final[rows, column]
        score[rows] = np.where(finished[rows], final, read(final, self.grown[rows, column] / self.length[rows, column]))
        tokens[rows], so_far[rows] = new, self.grown[rows, column]
        correct = None
        if self.correct is not None:
            correct = np.zeros(len(node), bool)
            correct[rows] = self.correct[rows, column] & finished[rows]
            correct = correct[:, None]
        return score[:, None], finished[:, None], tokens[:, None], so_far[:, None], correct
