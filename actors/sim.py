"""Simulated generator and reward model: a world of ``pipeline.worlds`` behind the engine interfaces.

A rollout from the prompt draws a fresh state latent and a reward from the world; a rollout from a
state draws a reward given that state's latent. Everything a rollout is comes from its own seed,
so results do not depend on which replica served it or in what batch. The reward is attached to
the rollout; ``SimRewardModel`` reads it back (as a real RM would compute it). Optional latencies
make replicas behave like GPU engines for throughput experiments.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from actors.interfaces import Rollout, RolloutRequest, Score, ScoreRequest, StatePrefix
from pipeline.worlds import make_world


class SimGenerator:
    def __init__(self, family: str = "gaussian", params: dict | None = None, state_tokens: int = 100,
                 mean_response_tokens: int = 400, short_rollout_fraction: float = 0.0,
                 latency_per_token_s: float = 0.0, **_ignored):
        self.world = make_world(family, **(params or {}))
        self.state_tokens = int(state_tokens)
        self.mean_response_tokens = int(mean_response_tokens)
        self.short_rollout_fraction = float(short_rollout_fraction)
        self.latency_per_token_s = float(latency_per_token_s)

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        rollouts = [self._one(request) for request in requests]
        if self.latency_per_token_s > 0 and rollouts:
            # A batched engine's step time grows with the longest sequence, not the batch size.
            time.sleep(self.latency_per_token_s * max(r.num_generated_tokens for r in rollouts))
        return rollouts

    def _one(self, request: RolloutRequest) -> Rollout:
        rng = np.random.default_rng(request.seed)
        from_prompt = request.state is None
        latent = float(self.world.sample_states(rng, ())) if from_prompt else float(request.state.latent)
        reward, correct = self.world.sample_rewards(rng, np.array([latent]))
        prompt_tokens = 32 + len(request.prompt.text) // 4
        if from_prompt:
            short = rng.random() < self.short_rollout_fraction
            generated = int(rng.integers(1, self.state_tokens)) if short else \
                self.state_tokens + int(rng.geometric(1.0 / max(1, self.mean_response_tokens - self.state_tokens)))
            state = None if short else StatePrefix(text=f"<state {request.seed}>", latent=latent)
        else:
            generated = int(rng.geometric(1.0 / max(1, self.mean_response_tokens - self.state_tokens)))
            prompt_tokens += self.state_tokens
            state = None
        return Rollout(
            request_id=request.request_id,
            response_text=f"{'' if from_prompt else request.state.text} <sim rollout {request.seed}>",
            token_ids=[],
            finish_reason="stop",
            num_generated_tokens=generated,
            num_prompt_tokens=prompt_tokens,
            num_cached_tokens=0 if from_prompt else self.state_tokens,
            state=state,
            sim_reward=float(reward[0]),
            correct=None if correct is None else bool(correct[0]),
        )


class SimRewardModel:
    def __init__(self, latency_per_item_s: float = 0.0, **_ignored):
        self.latency_per_item_s = float(latency_per_item_s)

    def score(self, requests: list[ScoreRequest]) -> list[Score]:
        if self.latency_per_item_s > 0:
            time.sleep(self.latency_per_item_s * len(requests))
        scores = []
        for request in requests:
            if request.sim_reward is None:
                raise ValueError(f"request {request.request_id}: the sim reward model scores only sim rollouts")
            scores.append(Score(request.request_id, request.sim_reward, num_tokens=len(request.response_text) // 4))
        return scores


class FreeRewardModel:
    """Scores any response at almost no cost: a stable pseudo-random number in [0, 1) from its text.
    Meaningless as a reward; ``slg bench --free-rm`` uses it to measure the generator path alone
    (on a small machine a real reward model takes CPU time from the generator)."""

    def __init__(self, **_ignored):
        pass

    def score(self, requests: list[ScoreRequest]) -> list[Score]:
        return [Score(r.request_id, int.from_bytes(hashlib.blake2b(r.response_text.encode(), digest_size=8).digest(),
                                                   "little") / 2**64) for r in requests]
