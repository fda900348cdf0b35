"""Speculative Rejection (``spec_rejection``; Sun et al., NeurIPS 2024, arXiv 2410.20290): best-of-N that
stops the responses the reward model already scores low, partway through.

Pure numpy. The algorithm as implemented, in the round protocol (``pipeline.search.protocol``):

1. Start N responses from the prompt, each generating ``chunk_tokens`` tokens (one request with
   ``max_new_tokens``); the reward model scores every partial response (a chunk's reward is the
   score of the response so far) and says which ones ended.
2. Rank the responses of the round (those that grew in it, and the finished ones kept by the last
   rejection, as the reference code does) by score and reject the lowest ``floor(alpha n)`` of the
   n ranked (``rejection_rate`` = alpha), keeping at least one. The kept responses that have not
   ended grow by the next chunk: one ``grow`` request per surviving response, continuing exactly its
   own tokens. Repeat until no kept response is unfinished.
3. The answer is the highest-scoring finished response (``EpisodeLedger``, ``SearchRecord``).

Chunks: with ``schedule=memory`` (the default) the k-th rejection comes at ``chunk_tokens (1 -
alpha)^-k`` tokens, the paper's schedule: it generates until GPU memory is full, and each rejection
frees the memory the survivors fill by growing 1/(1 - alpha) times longer (with alpha = 0.5: chunks
of tau, tau, 2 tau, 4 tau, ...); ``fixed``: every chunk is ``chunk_tokens``.

Budget: N is the number of responses started (the paper's initial batch size, which its memory
decides); continuing a response is not another rollout, so the rollouts spent are N, while the
tokens generated are fewer than best-of-N's at the same N. Comparisons at equal cost count tokens
(``pipeline.offline.equal_cost``; the token multiplier of replay and of the run summary).

Deviations from the paper and its code (github.com/Zanette-Labs/SpeculativeRejection), as read here:
- the first rejection point is a parameter (``chunk_tokens``), not found from free GPU memory, and the
  schedule after it is the paper's constant-memory one (or fixed chunks), not re-measured memory;
- at least one response is always kept (the code's ``round((1 - alpha) n)`` keeps none of one
  response at alpha = 0.5 and then answers with a partial response), and the rejected count is
  ``floor(alpha n)`` rather than Python's round-half-to-even of the kept count;
- every finished response stays a candidate answer; the code loses a response that finished in a
  round in which it ranked among the rejected (only ever a lower one than those kept, unless a kept
  response later ends below it);
- with alpha = 0 the memory schedule would never move: chunks are then fixed (nothing is rejected).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipeline.search.base import SearchPolicy
from pipeline.search.config import ChunkSchedule, SpecRejectionConfig
from pipeline.search.protocol import NO_NODE, ROOT, Request, Rollouts

MAX_CHUNK_TOKENS = 1 << 30  # far beyond any response: the memory schedule's chunks double without end


class SpeculativeRejection(SearchPolicy):
    name = "spec_rejection"

    def _search(self):
        settings, budget, batch = self.config.spec_rejection, self.budget, self.batch_size
        chunks = chunk_sizes(settings)
        (first,) = yield [Request.uniform(ROOT, budget, batch, max_new_tokens=next(chunks))]
        score, finished = _scores(first), _finished(first)
        ranked = np.ones((batch, budget), dtype=bool)  # the responses this round's rejection ranks
        while True:
            kept = keep_best(score, ranked, settings.rejection_rate)
            growing = kept & ~finished
            if not growing.any():
                return
            survivors = growing.sum(axis=1)
            order = np.argsort(~growing, axis=1, kind="stable")[:, :int(survivors.max())]  # survivors first, by index
            asked = np.arange(order.shape[1])[None, :] < survivors[:, None]
            nodes = np.where(asked, order, NO_NODE)
            results = yield Request.grow_each(nodes, next(chunks))
            rows, columns = np.nonzero(asked)
            score[rows, nodes[rows, columns]] = _column(results, "rewards", np.nan, -np.inf)[rows, columns]
            finished[rows, nodes[rows, columns]] = _column(results, "finished", True, True)[rows, columns]
            ranked = kept


def keep_best(score: np.ndarray, ranked: np.ndarray, rejection_rate: float) -> np.ndarray:
    """(B, R) bool: of each episode's ``ranked`` responses (n of them), all but the ``floor(alpha n)``
    lowest-scoring (at least one kept); equal scores keep the lower index. ``score`` has -inf for a
    response without a finite score."""
    batch, width = score.shape
    count = ranked.sum(axis=1)
    rejected = np.minimum(np.floor(rejection_rate * count + 1e-9).astype(np.int64), np.maximum(count - 1, 0))
    index = np.broadcast_to(np.arange(width), (batch, width))
    order = np.lexsort((index, -np.where(ranked, score, -np.inf), ~ranked), axis=1)  # ranked first, best first
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, index, axis=1)
    return ranked & (rank < (count - rejected)[:, None])


def chunk_sizes(settings: SpecRejectionConfig) -> Iterator[int]:
    """Tokens of each chunk, the first ``chunk_tokens``: the memory schedule's k-th rejection at
    ``chunk_tokens (1 - alpha)^-k`` tokens (chunks tau, tau, 2 tau, 4 tau at alpha = 0.5), or fixed chunks."""
    tau, alpha = settings.chunk_tokens, settings.rejection_rate
    if settings.schedule == ChunkSchedule.fixed or alpha == 0:
        while True:
            yield tau
    grown, k = 0, 0
    while True:
        size = min(MAX_CHUNK_TOKENS, max(1, round(tau * (1.0 - alpha) ** -k) - grown))
        grown += size
        k += 1
        yield size


def _column(results: list[Rollouts], field: str, missing, non_finite) -> np.ndarray:
    """(B, len(results)): the first rollout's ``field`` of each result (``missing`` where the result has
    none or no such field); NaN becomes ``non_finite``."""
    columns = []
    for result in results:
        values = getattr(result, field)
        columns.append(np.full((result.rewards.shape[0], 1), missing) if values is None or values.shape[1] == 0
                       else values[:, :1])
    out = np.concatenate(columns, axis=1)
    return np.where(np.isnan(out), non_finite, out) if out.dtype.kind == "f" else out


def _scores(rollouts: Rollouts) -> np.ndarray:
    return np.where(np.isnan(rollouts.rewards), -np.inf, rollouts.rewards)


def _finished(rollouts: Rollouts) -> np.ndarray:
    return np.ones(rollouts.rewards.shape, dtype=bool) if rollouts.finished is None else rollouts.finished.copy()
