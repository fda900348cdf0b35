"""The two seams between the search and the engines: what a generator and a reward model are asked.

Plain dataclasses, no engine imports. A generator turns rollout requests into rollouts; a reward
model turns (prompt, response) pairs into scores. Each method takes a batch and returns one
answer per item, in order. Backends (``sim``, ``vllm``, ``hf``) implement these behind the
registry in ``actors.registry``; the driver only ever sees these types.
"""

from __future__ import annotations

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

    ``latent`` carries a simulated world's state instead of tokens (``sim`` backend only).
    """

    token_ids: tuple[int, ...] = ()
    text: str = ""
    latent: float | None = None


@dataclass(frozen=True)
class RolloutRequest:
    """One rollout: from the prompt (``state is None``) or continuing a state, with its own seed."""

    request_id: int
    prompt: PromptInput
    state: StatePrefix | None
    seed: int


@dataclass
class Rollout:
    """What a generator returns for one request.

    ``response_text`` is the whole response (state prefix included) as the reward model should
    read it. ``state`` is set for rollouts from the prompt that are at least T tokens long: the
    prefix that may become a state. Token counts are per rollout; ``num_cached_tokens`` is what the
    engine served from its prefix cache (0 where it does not say). Real backends grade their
    rollouts (``correct``, ``answer``) where they run, in parallel, rather than in the driver.
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
    sim_reward: float | None = None     # simulated worlds attach the reward to the rollout itself


@dataclass(frozen=True)
class ScoreRequest:
    request_id: int
    prompt: PromptInput
    response_text: str
    sim_reward: float | None = None


@dataclass
class Score:
    request_id: int
    reward: float
    num_tokens: int = 0
    extra: dict = field(default_factory=dict)


class Generator(Protocol):
    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]: ...


class RewardModel(Protocol):
    def score(self, requests: list[ScoreRequest]) -> list[Score]: ...
