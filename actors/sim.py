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

Responses that grow in chunks (a request with ``max_new_tokens``, ``spec_rejection``): the sim fixes
a response's whole path at its first token, as a function of its seed: its length and final reward
are those of the root rollout with that seed (so a chunked response is the very response best-of-N
draws with that seed), and its token ids are ``response_token_ids(seed, ...)``, the first being the
seed. A chunk from a prefix continues the response the prefix's first token names, from exactly
the tokens given (a prefix that is not that response's own tokens is refused); the chunk's seed
changes nothing. The reward model reads a partial response as the world model says
(``World.partial_score``, from a stream of (seed, tokens so far)), a finished one exactly. The
reward model counts what a real one reads: the prompt (32 + characters / 4 tokens, the generator's
count) and the response so far, its length recomputed from the seeds as the generator drew it.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from array import array

import numpy as np

from pipeline.distributed.contract import Rollout, RolloutRequest, Score, ScoreRequest, StatePrefix, scores_prefixes
from pipeline.offline.worlds import make_world

# A simulated response: "[<state ROOT_SEED>] <sim rollout SEED>" (the state's text, then the rollout's own);
# a state's prefix alone (scored as a partial response): "<state ROOT_SEED>"
_RESPONSE = re.compile(r"^(?:<state (\d+)>)? <sim rollout (\d+)>$")
_PREFIX = re.compile(r"^<state (\d+)>$")
# a response grown in chunks: "<sim response SEED TOKENS_SO_FAR/LENGTH>"
_GROWN = re.compile(r"^<sim response (\d+) (\d+)/(\d+)>$")
_PREFIX_SEED = 0x5EED  # the prefix reading's noise: a stream of its own, from the state's root seed
_PARTIAL_SEED = 0xC4A7  # a partial response's reading: a stream of its own, from (its seed, its tokens so far)


def response_token_ids(seed: int, start: int, stop: int) -> list[int]:
    """Token ids ``start:stop`` of the sim response with this seed: the seed first, then a fixed
    function of (seed, position) below 2^31."""
    position = np.arange(start, stop, dtype=np.int64)
    ids = (seed * 2654435761 + position * 40503 + 12345) & 0x7FFFFFFF
    return np.where(position == 0, seed, ids).tolist()


def prompt_token_count(prompt) -> int:
    """The tokens of a prompt as the sim counts them."""
    return 32 + len(prompt.text) // 4


class _SimWorld:
    """A world and the draws of its rollouts, as functions of seeds (a state's latent is cached: a
    state serves many rollouts)."""

    def __init__(self, family: str, params: dict | None, state_tokens: int = 100, mean_response_tokens: int = 400,
                 short_rollout_fraction: float = 0.0):
        self.family, self.params = family, dict(params or {})
        self.world = make_world(family, **self.params)
        self.state_latent = functools.lru_cache(maxsize=1 << 16)(self._state_latent)
        self.state_tokens = int(state_tokens)
        self.mean_response_tokens = int(mean_response_tokens)
        self.short_rollout_fraction = float(short_rollout_fraction)

    def __reduce__(self):  # sent to the driver actor inside SimGroundTruth: rebuilt there, cache and all
        return _SimWorld, (self.family, self.params, self.state_tokens, self.mean_response_tokens,
                           self.short_rollout_fraction)

    def generated_tokens(self, rng: np.random.Generator, from_prompt: bool) -> tuple[int, bool]:
        """(tokens, long enough to be a state) of the rollout whose draw left ``rng`` here: from the
        prompt T plus a geometric tail (or, a ``short_rollout_fraction`` of the time, fewer than T);
        from a state the tail alone."""
        tail = 1.0 / max(1, self.mean_response_tokens - self.state_tokens)
        if not from_prompt:
            return int(rng.geometric(tail)), False
        if rng.random() < self.short_rollout_fraction:
            return int(rng.integers(1, self.state_tokens)), False
        return self.state_tokens + int(rng.geometric(tail)), True

    def response(self, seed: int) -> tuple[float, bool | None, int]:
        """(final reward, correct, length) of the response from the prompt with this seed."""
        rng, reward, correct = self.draw(seed, None)
        return reward, correct, self.generated_tokens(rng, True)[0]

    def partial_score(self, seed: int, grown: int, length: int) -> float:
        """The reward model's reading of the response with this seed cut after ``grown`` of its
        ``length`` tokens (``World.partial_score``); its final reward once whole."""
        final = self.response(seed)[0]
        if grown >= length:
            return final
        rng = np.random.Generator(np.random.PCG64([seed, _PARTIAL_SEED, grown]))
        return float(self.world.partial_score(rng, np.array([final]), np.array([grown / length]))[0])

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
        self.sim = _SimWorld(family, params, state_tokens, mean_response_tokens, short_rollout_fraction)
        self.state_tokens = int(state_tokens)
        self.latency_per_token_s = float(latency_per_token_s)

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        rollouts = [self._one(request) for request in requests]
        if self.latency_per_token_s > 0 and rollouts:
            # A batched engine's step time grows with the longest sequence, not the batch size.
            time.sleep(self.latency_per_token_s * max(r.num_generated_tokens for r in rollouts))
        return rollouts

    def _one(self, request: RolloutRequest) -> Rollout:
        if request.max_new_tokens is not None:
            return self._chunk(request)
        rng, _, correct = self.sim.draw(request.seed, request.state)
        from_prompt = request.state is None
        prompt_tokens = prompt_token_count(request.prompt)
        generated, long_enough = self.sim.generated_tokens(rng, from_prompt)
        state = StatePrefix(token_ids=(request.seed,), text=f"<state {request.seed}>") if long_enough else None
        if not from_prompt:
            prompt_tokens += self.state_tokens
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

    def _chunk(self, request: RolloutRequest) -> Rollout:
        """Up to ``max_new_tokens`` more tokens of a response: a new one (its seed, the request's) from
        the prompt, or the one a prefix's first token names, continued from exactly its tokens."""
        prefix = request.state.token_ids if request.state is not None else ()
        seed = prefix[0] if prefix else request.seed
        _, correct, length = self.sim.response(seed)
        done = len(prefix)
        if done >= length or list(prefix) != response_token_ids(seed, 0, done):
            raise ValueError(f"request {request.request_id}: the prefix is not a partial response of the sim "
                             f"response {seed} ({done} tokens given, the response has {length})")
        new = min(request.max_new_tokens, length - done)
        finished = done + new == length
        return Rollout(request_id=request.request_id, response_text=f"<sim response {seed} {done + new}/{length}>",
                       token_ids=array("i", response_token_ids(seed, done, done + new)), finish_reason="stop" if finished else "length",
                       num_generated_tokens=new, num_prompt_tokens=prompt_token_count(request.prompt) + done,
                       num_cached_tokens=done, correct=correct if finished else None, finished=finished)


class SimRewardModel:
    """Reads a simulated response and gives the reward its world drew for it (the generator's draw, redone)."""

    def __init__(self, family: str = "gaussian", params: dict | None = None, latency_per_item_s: float = 0.0,
                 state_tokens: int = 100, mean_response_tokens: int = 400, short_rollout_fraction: float = 0.0,
                 **_ignored):
        self.sim = _SimWorld(family, params, state_tokens, mean_response_tokens, short_rollout_fraction)
        self.latency_per_item_s = float(latency_per_item_s)

    @scores_prefixes
    def score(self, requests: list[ScoreRequest]) -> list[Score]:
        if self.latency_per_item_s > 0:
            time.sleep(self.latency_per_item_s * len(requests))
        return [self._one(request) for request in requests]

    def _one(self, request: ScoreRequest) -> Score:
        """The reward and the tokens read (the prompt's and the response's, recomputed from its seeds)."""
        text, prompt_tokens = request.response_text, prompt_token_count(request.prompt)
        prefix = _PREFIX.match(text)
        if prefix is not None:
            return Score(request.request_id, self.sim.prefix_score(int(prefix.group(1))),
                         num_tokens=prompt_tokens + self.sim.state_tokens)
        grown = _GROWN.match(text)
        if grown is not None:
            seed, so_far, length = (int(group) for group in grown.groups())
            return Score(request.request_id, self.sim.partial_score(seed, so_far, length), num_tokens=prompt_tokens + so_far)
        match = _RESPONSE.match(text)
        if match is None:
            raise ValueError(f"request {request.request_id}: the sim reward model scores only sim rollouts, "
                             f"got {text[:60]!r}")
        root_seed, seed = match.groups()
        state = None if root_seed is None else StatePrefix(token_ids=(int(root_seed),))
        rng, reward, _ = self.sim.draw(int(seed), state)
        length = self.sim.generated_tokens(rng, state is None)[0] + (0 if state is None else self.sim.state_tokens)
        return Score(request.request_id, reward, num_tokens=prompt_tokens + length)


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

    @scores_prefixes
    def score(self, requests: list[ScoreRequest]) -> list[Score]:
        return [Score(r.request_id, int.from_bytes(hashlib.blake2b(r.response_text.encode(), digest_size=8).digest(),
                                                   "little") / 2**64) for r in requests]
