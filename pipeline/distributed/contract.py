"""The engine contract: what a generator and a reward model are asked, and what they answer.

Plain dataclasses, no engine imports. A generator turns rollout requests into rollouts; a reward
model turns (prompt, response) pairs into scores (and, asked, the response's state prefix alone:
``scores_prefixes``). Each method takes a batch and returns one answer per item, in order. The
fields are what a real engine produces and reads (token ids, text, counts, grades); a simulated
engine encodes its world in the same fields (its tokens and texts), so no field exists for the
simulator alone. Backends (``sim``, ``vllm``, ``hf`` in ``actors``) implement these and are chosen
by name in ``pipeline.distributed.backends``; the driver only ever sees these types.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class PromptInput:
    """One problem. Generators format it (chat template or raw) and tokenise it themselves."""

    prompt_id: str
    text: str
    answer: str | None = None  # the reference answer, where known (grading)


@dataclass(frozen=True)
class StatePrefix:
    """A state: the first T generated tokens of a root rollout, kept as token ids (never re-tokenised).
    Also a partial response so far (every token generated), continued by the next chunk: its ids are
    then an ``array("i")`` (it is sent whole with every chunk, and an array pickles fast); a state's
    are a tuple (prefixes are keys)."""

    token_ids: Sequence[int] = ()
    text: str = ""


@dataclass(frozen=True)
class RolloutRequest:
    """One rollout: from the prompt (``state is None``) or continuing a state, with its own seed.

    ``max_new_tokens`` caps this rollout's generated tokens below the engine's own limit (the
    response's ``max_tokens``, state included): a chunk of a response that grows (``spec_rejection``);
    its ``state`` is then the partial response so far, every token of it, continued exactly."""

    request_id: int
    prompt: PromptInput
    state: StatePrefix | None
    seed: int
    max_new_tokens: int | None = None


@dataclass
class Rollout:
    """What a generator returns for one request.

    ``response_text`` is the whole response (state prefix included) as the reward model should
    read it. ``state`` is set for rollouts from the prompt that are at least T tokens long: the
    prefix that may become a state. Token counts are per rollout; ``num_cached_tokens`` is what the
    engine served from its prefix cache (0 where it does not say). Real backends grade their
    rollouts (``correct``, ``answer``) where they run, in parallel, rather than in the driver.
    ``finished`` is False only where the request's ``max_new_tokens`` stopped the response before
    it ended (an end-of-sequence or stop string, or the engine's own length limit): a partial response.
    """

    request_id: int
    response_text: str
    token_ids: list[int]
    finish_reason: str
    num_generated_tokens: int
    num_prompt_tokens: int
    num_cached_tokens: int = 0
    state: StatePrefix | None = None
    correct: bool | None = None         # graded against the prompt's answer (None: no answer / grader)
    answer: str | None = None           # the extracted final answer, the key of majority voting
    finished: bool = True               # False: cut by the request's max_new_tokens, to be continued


@dataclass(frozen=True)
class ScoreRequest:
    """One response to score. ``prefix_text``: also score this text alone, the prefix of the state the
    response passed through (a partial response, as Speculative Rejection scores them; ``slg_share``
    reads it), answered in the same ``Score``: one item the driver sends and unpacks, not two."""

    request_id: int
    prompt: PromptInput
    response_text: str
    prefix_text: str | None = None


@dataclass
class Score:
    """``prefix_reward`` and ``prefix_num_tokens``: the score of the request's ``prefix_text`` and the
    tokens read for it (None and 0 where it asked for none)."""

    request_id: int
    reward: float
    num_tokens: int = 0
    extra: dict = field(default_factory=dict)
    prefix_reward: float | None = None
    prefix_num_tokens: int = 0


def scores_prefixes(score):
    """A reward model's ``score`` method (one ``Score`` per request, read from its ``response_text``)
    that also answers ``ScoreRequest.prefix_text``: each prefix asked for is scored as one more
    request of the same batch, and its score goes back into its response's ``Score``. The method
    is synchronous (every backend's is), and sees a prefix under its response's ``request_id``; a
    batch of ``driver.max_batch_scores`` items can so hold up to twice as many texts."""

    @functools.wraps(score)
    def with_prefixes(self, requests: list[ScoreRequest]) -> list[Score]:
        asked = [i for i, request in enumerate(requests) if request.prefix_text is not None]
        if not asked:
            return score(self, requests)
        prefixes = [ScoreRequest(requests[i].request_id, requests[i].prompt, requests[i].prefix_text) for i in asked]
        answers = score(self, [*requests, *prefixes])
        for i, prefix in zip(asked, answers[len(requests):]):
            answers[i].prefix_reward, answers[i].prefix_num_tokens = prefix.reward, prefix.num_tokens
        return answers[:len(requests)]

    return with_prefixes


class Generator(Protocol):
    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]: ...


class RewardModel(Protocol):
    """Answers ``prefix_text`` too (``scores_prefixes`` does that for any ``score``)."""

    def score(self, requests: list[ScoreRequest]) -> list[Score]: ...
