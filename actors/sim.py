"""Simulated generator, reward model and ground truth: a world of ``pipeline.offline.worlds`` behind the engine contract.

A rollout from the prompt draws a fresh state latent and a reward from the world; a rollout from a
state draws a reward given that state's latent. Everything a rollout is comes from seeds: a state's
tokens are the seed of the root rollout it was cut from (its latent is a function of them, as a real
model's continuation is a function of its prefix tokens), and a response's text names its state and
its own seed. So the reward model recomputes the reward from the response text alone, as a real
reward model reads the response, and no message carries a field for the simulator. Results do not
depend on which replica served a rollout or in what batch. ``SimGroundTruth`` knows the exact
value of any state (the ``oracle`` method's hook). Optional latencies make replicas behave like GPU
engines for throughput experiments.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time

import numpy as np

from pipeline.distributed.contract import Rollout, RolloutRequest, Score, ScoreRequest, StatePrefix
from pipeline.offline.worlds import make_world

# A simulated response: "[<state ROOT_SEED>] <sim rollout SEED>" (the state's text, then the rollout's own);
# a state's prefix alone (scored as a partial response): "<state ROOT_SEED>"
_RESPONSE = re.compile(r"^(?:<state (\d+)>)? <sim rollout (\d+)>$")
_PREFIX = re.compile(r"^<state (\d+)>$")
_PREFIX_SEED = 0x5EED  # the prefix reading's noise: a stream of its own, from the state's root seed


class _SimWorld:
    """A world and the draws of its rollouts, as functions of seeds (a state's latent is cached: a
    state serves many rollouts)."""

    def __init__(self, family: str, params: dict | None):
        self.family, self.params = family, dict(params or {})
        self.world = make_world(family, **self.params)
        self.state_latent = functools.lru_cache(maxsize=1 << 16)(self._state_latent)

    def __reduce__(self):  # sent to the driver actor inside SimGroundTruth: rebuilt there, cache and all
        return _SimWorld, (self.family, self.params)

    def _state_latent(self, root_seed: int) -> float:
        """A state's latent, from its tokens: the seed of the root rollout it was cut from."""
        return float(self.world.sample_states(np.random.Generator(np.random.PCG64(root_seed)), ()))

    def prefix_score(self, root_seed: int) -> float:
        """The reward model's reading of a state's prefix alone (``World.prefix_score``)."""
        rng = np.random.Generator(np.random.PCG64([root_seed, _PREFIX_SEED]))
        return float(self.world.prefix_score(rng, np.array([self.state_latent(root_seed)]))[0])

    def draw(self, seed: int, state: StatePrefix | None):
        """(rng, reward, correct) of the rollout with this seed, from the prompt or from a state."""
        rng = np.random.Generator(np.random.PCG64(seed))  # = default_rng(seed), without its per-call wrapper
        latent = float(self.world.sample_states(rng, ())) if state is None else self.state_latent(state.token_ids[0])
        reward, correct = self.world.sample_rewards(rng, np.array([latent]))
        return rng, float(reward[0]), None if correct is None else bool(correct[0])


class SimGenerator:
    def __init__(self, family: str = "gaussian", params: dict | None = None, state_tokens: int = 100,
                 mean_response_tokens: int = 400, short_rollout_fraction: float = 0.0,
                 latency_per_token_s: float = 0.0, **_ignored):
        self.sim = _SimWorld(family, params)
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
        rng, _, correct = self.sim.draw(request.seed, request.state)
        from_prompt = request.state is None
        prompt_tokens = 32 + len(request.prompt.text) // 4
        if from_prompt:
            short = rng.random() < self.short_rollout_fraction
            generated = int(rng.integers(1, self.state_tokens)) if short else \
                self.state_tokens + int(rng.geometric(1.0 / max(1, self.mean_response_tokens - self.state_tokens)))
            state = None if short else StatePrefix(token_ids=(request.seed,), text=f"<state {request.seed}>")
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
            correct=correct,
        )


class SimRewardModel:
    """Reads a simulated response and gives the reward its world drew for it (the generator's draw, redone)."""

    def __init__(self, family: str = "gaussian", params: dict | None = None, latency_per_item_s: float = 0.0,
                 **_ignored):
        self.sim = _SimWorld(family, params)
        self.latency_per_item_s = float(latency_per_item_s)

    def score(self, requests: list[ScoreRequest]) -> list[Score]:
        if self.latency_per_item_s > 0:
            time.sleep(self.latency_per_item_s * len(requests))
        scores = []
        for request in requests:
            prefix = _PREFIX.match(request.response_text)
            if prefix is not None:
                scores.append(Score(request.request_id, self.sim.prefix_score(int(prefix.group(1))),
                                    num_tokens=len(request.response_text) // 4))
                continue
            match = _RESPONSE.match(request.response_text)
            if match is None:
                raise ValueError(f"request {request.request_id}: the sim reward model scores only sim rollouts, "
                                 f"got {request.response_text[:60]!r}")
            root_seed, seed = match.groups()
            state = None if root_seed is None else StatePrefix(token_ids=(int(root_seed),))
            reward = self.sim.draw(int(seed), state)[1]
            scores.append(Score(request.request_id, reward, num_tokens=len(request.response_text) // 4))
        return scores


class SimGroundTruth:
    """Exact values of a world's prompt and states: what the ``oracle`` method selects by."""

    def __init__(self, family: str = "gaussian", params: dict | None = None, **_ignored):
        self.sim = _SimWorld(family, params)

    def values(self, states: list[StatePrefix | None], n: int) -> np.ndarray:
        """True V_n of each node: the prompt's best-of-n where the state is None, else the state's V_n."""
        world = self.sim.world
        out = np.full(len(states), world.prompt_value(n))
        cut = [i for i, state in enumerate(states) if state is not None]
        if cut:
            out[cut] = world.state_value(np.array([self.sim.state_latent(states[i].token_ids[0]) for i in cut]), n)
        return out


class FreeRewardModel:
    """Scores any response at almost no cost: a stable pseudo-random number in [0, 1) from its text.
    Meaningless as a reward; ``slg bench --free-rm`` uses it to measure the generator path alone
    (on a small machine a real reward model takes CPU time from the generator)."""

    def __init__(self, **_ignored):
        pass

    def score(self, requests: list[ScoreRequest]) -> list[Score]:
        return [Score(r.request_id, int.from_bytes(hashlib.blake2b(r.response_text.encode(), digest_size=8).digest(),
                                                   "little") / 2**64) for r in requests]
