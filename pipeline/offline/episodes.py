"""In-process rollout sources for simulated worlds and reward banks, and the loop that drives a policy.

Pure numpy: this is the offline twin of the Ray driver. A source plays B independent episodes of
one prompt: it remembers the state behind each root rollout (so that a later request for "state k"
continues root rollout k) and answers requests by sampling rewards. All randomness comes from the
source's own generator, so two policies run on sources with the same seed see the same root
rollouts and the same state rewards for as long as they ask the same things (common random
numbers: this is what makes ``oracle`` a paired comparison with ``slg``). Lengths in tokens and
partial scores come from a generator of their own (``token_rng``), so counting tokens changes no
reward drawn (``pipeline.offline.responses``: the token model, responses that grow in chunks).
"""

from __future__ import annotations

import numpy as np

from pipeline.offline.responses import GrowingResponses, TokenModel
from pipeline.offline.worlds import DEFAULT_PARTIAL_NOISE, World
from pipeline.search.base import SearchPolicy
from pipeline.search.protocol import ROOT, EpisodeLedger, Request, Rollouts
from pipeline.stats.pool import expected_max_of_pool, expected_max_of_weighted_pool
from pipeline.stats.prefix_signal import prefix_correlation


class RolloutSource:
    """B episodes of one prompt: answers requests, knows the true value of its nodes."""

    def __init__(self, batch_size: int, rng: np.random.Generator, tokens: TokenModel | None = None,
                 token_rng: np.random.Generator | None = None):
        self.batch_size = batch_size
        self.rng = rng
        self.tokens = tokens or TokenModel()
        # a stream of its own, spawned without drawing from ``rng``: counting tokens changes no reward
        self.token_rng = token_rng or np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])
        self._root_latents = np.empty((batch_size, 0))
        self.responses = GrowingResponses(batch_size)

    def draw(self, request: Request) -> Rollouts:
        if request.grow:
            return self._grow(request)
        batch, width = self.batch_size, int(request.count.max(initial=0))
        uniform = bool((request.count == width).all())
        wanted = np.ones((batch, width), dtype=bool) if uniform else np.arange(width)[None, :] < request.count[:, None]
        root_rows = request.node == ROOT
        # Fresh states only where a rollout starts at the prompt; a state's rollouts reuse its latent.
        if root_rows.all():
            latents = self._sample_states((batch, width))
        else:
            known = self._state_latents(np.where(request.node >= 0, request.node, 0))
            if root_rows.any():
                latents = np.where(root_rows[:, None], self._sample_states((batch, width)), known[:, None])
            else:
                latents = np.broadcast_to(known[:, None], (batch, width))
        rewards, correct = self._sample_rewards(latents)
        self._count_draws(latents, wanted)
        if not uniform:
            rewards = np.where(wanted, rewards, np.nan)
        from_root = root_rows[:, None] & wanted
        length = np.where(wanted, self.tokens.lengths(self.token_rng, np.broadcast_to(root_rows[:, None], wanted.shape)), 0)
        tokens, finished, final = length, None, rewards
        if request.max_new_tokens is not None:  # responses that grow: the first chunk of each
            if not root_rows[request.count > 0].all():
                raise ValueError("a chunked request starts responses from the prompt; continue one with a grow request")
            tokens = np.minimum(length, request.max_new_tokens)
            finished = (tokens == length) & wanted
            partial = self._read_partial(rewards, tokens / np.maximum(length, 1))
            rewards = np.where(finished | ~wanted, rewards, partial)
        read = self.tokens.prompt_tokens + tokens + np.where(root_rows[:, None], 0, self.tokens.state_tokens)
        state_index = state_score = prefix_reads = None
        if root_rows.any():
            before = (~np.isnan(self._root_latents)).sum(axis=1)  # root rollouts each episode had so far
            state_index = self._state_index(latents, before[:, None] + np.arange(width)[None, :], from_root)
            state_score = self._state_score(latents, from_root) if request.score_prefixes else None
            self._root_latents = np.concatenate([self._root_latents, np.where(from_root, latents, np.nan)], axis=1)
            self.responses.add(np.where(from_root, final, np.nan), np.where(from_root, length, 0),
                               np.where(from_root, tokens, 0), None if correct is None else correct & from_root)
            self._compact_root_latents(request)
            if state_score is not None:  # the reward model read each new state's prefix alone too
                prefix_reads = self._prefix_reads(latents, state_score, from_root)
                read = read + np.where(prefix_reads, self.tokens.prompt_tokens + self.tokens.state_tokens, 0)
        return Rollouts(rewards, can_branch=from_root & (finished is None), correct=self._answered(correct, wanted, finished),
                        state_index=state_index, state_score=state_score, finished=finished,
                        num_tokens=np.where(wanted, tokens, 0), rm_tokens=np.where(wanted, read, 0), prefix_reads=prefix_reads)

    def _grow(self, request: Request) -> Rollouts:
        """One chunk more of response ``node[b]`` of each episode: its partial score, or its final reward."""
        score, finished, tokens, so_far, correct = self.responses.grow(request.node, request.max_new_tokens,
                                                                       self._read_partial)
        asked = (request.node >= 0)[:, None]
        return Rollouts(score, can_branch=np.zeros_like(finished), correct=correct, finished=finished, num_tokens=tokens,
                        rm_tokens=np.where(asked, self.tokens.prompt_tokens + so_far, 0))

    def _read_partial(self, final: np.ndarray, fraction: np.ndarray) -> np.ndarray:
        """The reward model's reading of responses cut at ``fraction`` of their tokens (world model)."""
        raise NotImplementedError

    @staticmethod
    def _answered(correct, wanted, finished):
        if correct is None:
            return None
        return correct & wanted if finished is None else correct & wanted & finished

    def _count_draws(self, latents: np.ndarray, wanted: np.ndarray) -> None:
        """Note the rollouts drawn (a bank source counts the draws from each state's pool)."""

    def _state_index(self, latents: np.ndarray, root_index: np.ndarray, from_root: np.ndarray) -> np.ndarray:
        """``Rollouts.state_index`` of new root rollouts: each its own state (a world's states are
        continuous: two root rollouts never share one); a bank source knows better."""
        return np.where(from_root, root_index, -1)

    def _state_score(self, latents: np.ndarray, from_root: np.ndarray) -> np.ndarray | None:
        """``Rollouts.state_score`` of new root rollouts of a request that asks (``Request.score_prefixes``);
        None where the source has no prefix scores."""
        return None

    def _prefix_reads(self, latents: np.ndarray, state_score: np.ndarray, from_root: np.ndarray) -> np.ndarray:
        """(B, width) bool: the root rollouts of a request that asks at which the reward model reads a
        state's prefix alone, once per state, as the driver scores it. A world's every root rollout is a
        state of its own."""
        return from_root & ~np.isnan(state_score)

    def _compact_root_latents(self, request: Request) -> None:
        # Root rollouts are numbered per episode in the order they came: keep each episode's
        # latents left-aligned so that index k is that episode's k-th root rollout.
        if (request.node == ROOT).all() and (request.count == request.count[0]).all():
            return
        order = np.argsort(np.isnan(self._root_latents), axis=1, kind="stable")
        self._root_latents = np.take_along_axis(self._root_latents, order, axis=1)
        self.responses.reorder(order)

    def _state_latents(self, index: np.ndarray) -> np.ndarray:
        if self._root_latents.shape[1] == 0:
            return np.zeros(self.batch_size)
        if (index >= self._root_latents.shape[1]).any():
            raise ValueError(f"no root rollout {int(index.max())} to continue: only {self._root_latents.shape[1]} so far")
        return self._root_latents[np.arange(self.batch_size), index]

    def true_value(self, nodes: np.ndarray, n: np.ndarray) -> np.ndarray:
        """True V_n of each node (B, k); n is (B,). The root's value is the prompt's BoN value."""
        out = np.empty(nodes.shape)
        for budget in np.unique(n):
            rows = n == budget
            latents = self._root_latents[rows][np.arange(rows.sum())[:, None], np.maximum(nodes[rows], 0)]
            values = self._state_value(latents, int(budget))
            out[rows] = np.where(nodes[rows] == ROOT, self._prompt_value(int(budget)), values)
        return out

    def _sample_states(self, shape):
        raise NotImplementedError

    def _sample_rewards(self, latents):
        raise NotImplementedError

    def _state_value(self, latents, n):
        raise NotImplementedError

    def _prompt_value(self, n):
        raise NotImplementedError


class WorldSource(RolloutSource):
    """Episodes of a fresh prompt of a simulated world. Prefix scores (``World.prefix_score``) come
    from a generator of their own, so that asking for them changes no reward drawn."""

    def __init__(self, world: World, batch_size: int, rng: np.random.Generator,
                 prefix_rng: np.random.Generator | None = None, tokens: TokenModel | None = None,
                 token_rng: np.random.Generator | None = None):
        super().__init__(batch_size, rng, tokens, token_rng)
        self.world = world
        self.prefix_rng = prefix_rng

    def _read_partial(self, final, fraction):
        return self.world.partial_score(self.token_rng, final, fraction)

    def _state_score(self, latents, from_root):
        if self.prefix_rng is None:
            return None
        return np.where(from_root, self.world.prefix_score(self.prefix_rng, np.where(from_root, latents, 0.0)), np.nan)

    def _sample_states(self, shape):
        return self.world.sample_states(self.rng, shape)

    def _sample_rewards(self, latents):
        return self.world.sample_rewards(self.rng, latents)

    def _state_value(self, latents, n):
        return self.world.state_value(latents, n)

    def _prompt_value(self, n):
        return self.world.prompt_value(n)


class BankPrompt:
    """One prompt of a reward bank as the world it describes (docs/formats.md, "Reward bank").

    The bank's S sampled states are i.i.d. draws of the prompt's first T tokens. Sampled states with
    the same prefix (``state_texts``) are one state, drawn that many times: its pool is theirs
    together and its weight (the chance that a rollout from the prompt passes through it) is their
    share of S. A rollout from the prompt picks a state by weight, then a reward of its pool
    uniformly; a rollout from a state picks a reward of its pool (all with replacement). Without
    ``state_texts`` every sampled state is a state of its own, of weight 1/S. Flattened for fast
    sampling.
    """

    def __init__(self, prompt_id: str, states: list, correct: list | None = None, state_texts: list | None = None,
                 state_scores: list | None = None):
        self.prompt_id = prompt_id
        groups: dict = {}
        for slot, text in enumerate(state_texts if state_texts is not None else range(len(states))):
            groups.setdefault(text, []).append(slot)
        slots = list(groups.values())
        # the reward model's score of each state's prefix alone (a state's slots share a prefix, so a score)
        self.state_scores = None if state_scores is None else np.array([state_scores[group[0]] for group in slots], float)
        self.state_rewards = [np.concatenate([np.asarray(states[i], dtype=float) for i in group]) for group in slots]
        self.state_weights = np.array([len(group) / len(states) for group in slots])
        self.lengths = np.array([len(s) for s in self.state_rewards])
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.rewards = np.concatenate(self.state_rewards)
        self.correct = None if correct is None else np.concatenate(
            [np.asarray(correct[i], dtype=bool) for group in slots for i in group])
        self.cumulative_weights = np.cumsum(self.state_weights)
        self.equal_weights = bool((self.state_weights == self.state_weights[0]).all())
        self._state_values: dict[int, np.ndarray] = {}

    @property
    def num_states(self) -> int:
        return len(self.lengths)

    def state_values(self, n: int) -> np.ndarray:
        if n not in self._state_values:
            self._state_values[n] = np.array([expected_max_of_pool(s, n) for s in self.state_rewards])
        return self._state_values[n]

    def prompt_weights(self) -> np.ndarray:
        """Probability of each flattened reward for a rollout from the prompt: w_i / L_i (w_i = 1/S unmerged)."""
        return np.repeat(self.state_weights / self.lengths, self.lengths)

    def bon_value(self, n) -> np.ndarray:
        return expected_max_of_weighted_pool(self.rewards, self.prompt_weights(), n)

    def prefix_correlation(self) -> float:
        """Correlation of a prompt draw's prefix score and reward (``pipeline.stats.prefix_signal``), each
        reward weighted by its chance as a prompt draw; NaN without prefix scores."""
        if self.state_scores is None:
            return float("nan")
        return prefix_correlation(np.repeat(self.state_scores, self.lengths), self.rewards, self.prompt_weights())

    def reward_scale(self) -> float:
        """A robust spread of a prompt draw's reward, as ``World.reward_scale``: the weighted
        interquartile range / 1.349, the weighted sd where the quartiles tie."""
        order = np.argsort(self.rewards, kind="stable")
        values, weights = self.rewards[order], self.prompt_weights()[order]
        cumulative = np.cumsum(weights) / weights.sum()
        low, high = values[np.searchsorted(cumulative, [0.25, 0.75]).clip(0, len(values) - 1)]
        if high > low:
            return float((high - low) / 1.349)
        mean = float(weights @ values / weights.sum())
        return float(np.sqrt(weights @ (values - mean) ** 2 / weights.sum()))


class BankSource(RolloutSource):
    """Episodes of one bank prompt: a root rollout picks a state by weight, then a reward of it.

    It counts each episode's draws from each state's pool (root rollouts through the state and
    rollouts from it): past the pool's size, an episode redraws rewards it already had, which a
    live engine would not (``pool_exceeded``).

    A bank records no lengths and no partial scores: its tokens follow the token model's constant
    lengths (``TokenModel(random_lengths=False)`` unless given), and a partial response is read as a
    world reads one (``pipeline.offline.worlds``, "Partial responses"), on the prompt's reward scale,
    with ``partial_noise``: a model, not a measurement."""

    def __init__(self, prompt: BankPrompt, batch_size: int, rng: np.random.Generator, tokens: TokenModel | None = None,
                 token_rng: np.random.Generator | None = None, partial_noise: float = DEFAULT_PARTIAL_NOISE):
        super().__init__(batch_size, rng, tokens or TokenModel(random_lengths=False), token_rng)
        self.prompt = prompt
        self.partial_noise = partial_noise
        self._first_root = np.full((batch_size, prompt.num_states), -1)  # each state's first root rollout
        self._prefix_read = np.zeros((batch_size, prompt.num_states), dtype=bool)  # whether each state's prefix was read
        self.draws = np.zeros((batch_size, prompt.num_states), dtype=np.int64)

    def _count_draws(self, latents, wanted):
        states = self.prompt.num_states
        cells = (np.arange(self.batch_size)[:, None] * states + latents.astype(np.int64))[wanted]
        self.draws += np.bincount(cells, minlength=self.batch_size * states).reshape(self.batch_size, states)

    def pool_exceeded(self) -> np.ndarray:
        """(B,) bool: the episode drew more rollouts from some state than its pool holds."""
        return (self.draws > self.prompt.lengths[None, :]).any(axis=1)

    def _read_partial(self, final, fraction):
        spread = self.partial_noise * self.prompt.reward_scale() * np.sqrt(1.0 - np.clip(fraction, 0.0, 1.0))
        return final + spread * self.token_rng.standard_normal(np.shape(final))

    def _sample_states(self, shape):
        if self.prompt.equal_weights:  # the draw of banks without shared prefixes, as replay always made it
            return self.rng.integers(0, self.prompt.num_states, size=shape).astype(float)
        total = self.prompt.cumulative_weights[-1]
        drawn = np.searchsorted(self.prompt.cumulative_weights, self.rng.random(shape) * total, side="right")
        return np.minimum(drawn, self.prompt.num_states - 1).astype(float)

    def _state_index(self, latents, root_index, from_root):
        """Root rollouts through one state share the index of the first of them."""
        state = np.where(from_root, latents, -1).astype(np.int64)
        out = np.full(state.shape, -1)
        for s in np.unique(state[state >= 0]):
            here = state == s
            first_here = np.where(here.any(axis=1), root_index[np.arange(len(state)), here.argmax(axis=1)], -1)
            self._first_root[:, s] = np.where(self._first_root[:, s] < 0, first_here, self._first_root[:, s])
            out = np.where(here, self._first_root[:, s][:, None], out)
        return out

    def _prefix_reads(self, latents, state_score, from_root):
        """A state's prefix is read at the first root rollout through it of the first request that asks
        to meet it (an earlier request that did not ask leaves it unread, as in the driver)."""
        state = np.where(from_root & ~np.isnan(state_score), latents, -1).astype(np.int64)
        reads = np.zeros(state.shape, dtype=bool)
        rows = np.arange(len(state))
        for s in np.unique(state[state >= 0]):
            here = state == s
            met = here.any(axis=1)
            new = met & ~self._prefix_read[:, s]
            reads[rows[new], here[new].argmax(axis=1)] = True
            self._prefix_read[:, s] |= met
        return reads

    def _sample_rewards(self, latents):
        state = latents.astype(np.int64)
        index = self.prompt.offsets[state] + (self.rng.random(state.shape) * self.prompt.lengths[state]).astype(np.int64)
        correct = None if self.prompt.correct is None else self.prompt.correct[index]
        return self.prompt.rewards[index], correct

    def _state_score(self, latents, from_root):
        if self.prompt.state_scores is None:
            return None
        return np.where(from_root, self.prompt.state_scores[np.where(from_root, latents, 0).astype(np.int64)], np.nan)

    def _state_value(self, latents, n):
        return self.prompt.state_values(n)[latents.astype(np.int64)]

    def _prompt_value(self, n):
        return float(self.prompt.bon_value(n))


def run_episodes(policy: SearchPolicy, source: RolloutSource) -> EpisodeLedger:
    """Drive ``policy`` against ``source`` to the end; the ledger holds spend and answers."""
    ledger = EpisodeLedger(policy.budget, policy.batch_size)
    while not policy.done:
        requests = policy.plan()
        ledger.charge(requests)
        results = [source.draw(r) for r in requests]
        ledger.record(results)
        policy.observe(results)
    return ledger

