"""The search policies: BoN, SLG (the reference algorithm), adaptive SLG, and the oracle.

Pure numpy. Each policy is written once, as a generator that yields a round of requests and
receives their rollouts (see ``pipeline.search.protocol``), over a batch of independent episodes. The same
objects are driven by offline replay (thousands of episodes at once), by the Ray driver (one
episode per prompt) and by tests. A policy never sees engines, seeds of other episodes or the
ledger; it only says where the next rollouts should come from.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.search.config import AdaptiveConfig, PredictionBudget, Predictor, SearchConfig, StateSelection
from pipeline.search.protocol import NO_NODE, ROOT, Request, Rollouts
from pipeline.stats.final_best import QuantileScale, expected_final_best, fit_tail_full_rows
from pipeline.stats.predict import NodePredictions, predict_node_values
from pipeline.stats.tail import expected_max_std_normal, fit_tail_rows, tail_constants

# true_value(nodes (B, k), n (B,)) -> true V_n of each node; only simulated worlds and banks have it
TrueValue = Callable[[np.ndarray, np.ndarray], np.ndarray]


class SearchPolicy:
    """Base class: drives ``_search`` (a generator of request rounds) through ``plan``/``observe``.

    After the search ends, ``selected`` holds the node that got the exploit budget (ROOT for BoN)
    and ``selected_prediction`` the value predicted for it (NaN where nothing was predicted).
    """

    name = ""
    needs_true_values = False

    def __init__(self, budget: int, batch_size: int, config: SearchConfig | None = None,
                 rng: np.random.Generator | None = None, true_value: TrueValue | None = None):
        if budget < 1:
            raise ValueError(f"budget N must be >= 1, got {budget!r}")
        if self.needs_true_values and true_value is None:
            raise ValueError(f"method {self.name!r} needs true state values, which only simulated worlds "
                             "and reward banks have")
        self.budget = int(budget)
        self.batch_size = int(batch_size)
        self.config = config or SearchConfig()
        self.rng = rng or np.random.default_rng(0)
        self.true_value = true_value
        self.selected = np.full(self.batch_size, ROOT, dtype=np.int64)
        self.selected_prediction = np.full(self.batch_size, np.nan)
        self._rounds = self._search()
        self._pending: list[Request] = next(self._rounds, [])

    def plan(self) -> list[Request]:
        """This round's requests; an empty list once the search is over."""
        return self._pending

    def observe(self, results: list[Rollouts]) -> None:
        """The rollouts of this round's requests, in order; moves the search to its next round."""
        if len(results) != len(self._pending):
            raise ValueError(f"expected {len(self._pending)} results, got {len(results)}")
        try:
            self._pending = self._rounds.send(results)
        except StopIteration:
            self._pending = []

    @property
    def done(self) -> bool:
        return not self._pending

    def _search(self) -> Iterator[list[Request]]:
        raise NotImplementedError

    # --- helpers shared by the SLG family ---------------------------------------------------

    def _pick_states(self, root: Rollouts, num_states: int, stable: bool = True) -> np.ndarray:
        """(B, K) root-rollout indices that become states, best first; NO_NODE where too few can branch.

        ``stable``: equal rewards keep their order (the reference); otherwise a partial sort picks
        the K best (ties at the K-th reward broken arbitrarily), O(r) for a large root sample.
        """
        if self.config.state_selection == StateSelection.top_reward:
            score = np.where(root.can_branch & ~np.isnan(root.rewards), root.rewards, -np.inf)
        else:
            score = np.where(root.can_branch & ~np.isnan(root.rewards), self.rng.random(root.rewards.shape), -np.inf)
        k = min(num_states, score.shape[1])
        if stable or k >= score.shape[1]:
            order = np.argsort(-score, axis=1, kind="stable")[:, :k]
        else:
            top = np.argpartition(-score, k - 1, axis=1)[:, :k]
            order = np.take_along_axis(top, np.argsort(-np.take_along_axis(score, top, axis=1), axis=1, kind="stable"),
                                       axis=1)
        chosen = np.where(np.take_along_axis(score, order, axis=1) > -np.inf, order, NO_NODE)
        if k < num_states:
            chosen = np.pad(chosen, ((0, 0), (0, num_states - k)), constant_values=NO_NODE)
        return chosen

    def _tail_fit_values(self, samples: np.ndarray, n: np.ndarray) -> np.ndarray:
        """The reference's predicted V_n per node (B, nodes) from its samples (B, nodes, L)
        (NaN-padded), n (B,): mu + sigma E(n) of the tail fit, cut at the episode's bound (``_episode_bounds``)."""
        batch, nodes, length = samples.shape
        mu, sigma, _, _ = fit_tail_rows(samples.reshape(batch * nodes, length), self.config.tail_fraction)
        values = mu.reshape(batch, nodes) + sigma.reshape(batch, nodes) * self._expected_max(n)[:, None]
        return _cut_at(values, self._episode_bounds(samples))

    def _predict_blended(self, samples: np.ndarray, n: np.ndarray) -> NodePredictions:
        """``pipeline.stats.predict`` (the predictor ``slg predict`` uses) per node, from samples (B, nodes,
        L) NaN-padded, n (B,); the nodes of an episode pool their tie counts, and share its bound
        (``_episode_bounds``). Costs ~0.2 s of CPU the first time a sample size is met (the predictor
        simulates its normal reference once per size)."""
        bound = self._episode_bounds(samples)
        return predict_node_values(samples, np.maximum(n, 1), None if bound is None else np.repeat(bound, samples.shape[1]))

    def _episode_bounds(self, samples: np.ndarray) -> np.ndarray | None:
        """``reward_upper_bound`` per episode (B,) for samples (B, nodes, L); NaN (no bound) in an
        episode holding a reward above it: a wrong declaration (a real RM's scores are only seen at
        run time) would cut every node's prediction to the same value, so it is not applied there
        rather than stopping the run. None when no bound is declared."""
        bound = self.config.reward_upper_bound
        if bound is None:
            return None
        return np.where(np.nanmax(samples, axis=(1, 2), initial=-np.inf) > bound, np.nan, bound)

    def _expected_max(self, n: np.ndarray) -> np.ndarray:
        rule = self.config.expected_max_rule.value
        unique, inverse = np.unique(np.maximum(n, 1), return_inverse=True)
        return np.array([expected_max_std_normal(int(k), rule) for k in unique])[inverse.ravel()].reshape(n.shape)


def _cut_at(values: np.ndarray, bound: np.ndarray | None) -> np.ndarray:
    """Values (B, nodes) cut at each episode's bound (B,) (``_episode_bounds``: None, or NaN where
    none applies); a NaN value (no fit) stays NaN."""
    if bound is None:
        return values
    return np.where(np.isnan(bound)[:, None], values, np.minimum(values, bound[:, None]))


def _stack_samples(columns: list[np.ndarray], width: int) -> np.ndarray:
    """(B, len(columns), width) from per-node reward arrays of possibly smaller width, NaN-padded."""
    out = np.full((columns[0].shape[0], len(columns), width), np.nan)
    for j, column in enumerate(columns):
        out[:, j, : column.shape[1]] = column[:, :width]
    return out


class BestOfN(SearchPolicy):
    """N rollouts from the prompt; the answer is the highest-reward one."""

    name = "bon"

    def _search(self):
        yield [Request.uniform(ROOT, self.budget, self.batch_size)]


class ScalingLawGuided(SearchPolicy):
    """SLG as the reference code runs it (REFERENCE.md, "SLG search"), options in ``SearchConfig``.

    Root: m rollouts. States: K root rollouts (highest reward by default) cut to their prefix.
    Estimate: m rollouts per state. Select: the argmax of the predicted V_N over the states and
    the root. Exploit: the rest of the budget from the selected node.
    """

    name = "slg"

    def _search(self):
        budget, batch = self.budget, self.batch_size
        m, num_states = self.config.schedule(budget)
        (root,) = yield [Request.uniform(ROOT, m, batch)]
        states = self._pick_states(root, num_states)
        estimates = yield [Request.per_episode(states[:, k], m) for k in range(num_states)]
        nodes = np.concatenate([np.full((batch, 1), ROOT), states], axis=1)
        samples = _stack_samples([root.rewards] + [e.rewards for e in estimates], m)
        spent = m * (nodes != NO_NODE).sum(axis=1)
        left = budget - spent
        horizon = np.full(batch, budget) if self.config.prediction_budget == PredictionBudget.total else left
        values = self._node_values(nodes, samples, horizon)
        # No node, or a node whose rewards were all dropped (NaN: no fit), is never picked.
        values = np.where((nodes == NO_NODE) | np.isnan(values), -np.inf, values)
        if not self.config.root_competes:
            has_state = (nodes[:, 1:] != NO_NODE).any(axis=1)
            values[:, 0] = np.where(has_state, -np.inf, values[:, 0])
        pick = np.argmax(values, axis=1)
        rows = np.arange(batch)
        self.selected = nodes[rows, pick]
        self.selected_prediction = self._reported_values(values, samples, horizon)[rows, pick]
        if (left > 0).any():
            yield [Request.per_episode(self.selected, left)]

    def _node_values(self, nodes: np.ndarray, samples: np.ndarray, horizon: np.ndarray) -> np.ndarray:
        """Each node's predicted V_N (B, nodes), the value it is selected by: the reference's tail fit."""
        return self._tail_fit_values(samples, horizon)

    def _reported_values(self, values: np.ndarray, samples: np.ndarray, horizon: np.ndarray) -> np.ndarray:
        """What results report as each node's predicted V_N: the value it was selected by; with
        ``reported_predictor=blended`` the shared predictor's (the episode's nodes pool their tie
        counts). Selecting by that predictor ranks nodes worse (README, "What the policies do with
        it"), so it never decides."""
        if self.config.reported_predictor == Predictor.blended:
            return self._predict_blended(samples, horizon).value
        return values


class Oracle(ScalingLawGuided):
    """``slg`` with perfect information: the same rollouts and split, selection by the true V_N."""

    name = "oracle"
    needs_true_values = True

    def _node_values(self, nodes, samples, horizon):
        return self.true_value(np.where(nodes == NO_NODE, ROOT, nodes), horizon)

    def _reported_values(self, values, samples, horizon):
        return values  # the true V_N it selected by


class AdaptiveSLG(SearchPolicy):
    """Adaptive SLG: a large prompt sample, successive halving of its best states, each step checked
    against fresh prompt draws (``adaptive_plan`` gives the split, ``AdaptiveConfig`` the settings).

    Every node is valued by its predicted *final* best, E[max(b, max of the n rollouts left)], b the
    best reward so far, on the prompt's own quantile scale (``pipeline.stats.final_best``): there the
    prompt is standard normal by construction and a state is normal with the mean and sd of its
    rewards' scores. After each halving round a state is dropped when the prompt beats it even with
    its mean and sd at their upper confidence bounds; when no state is left the rest of the budget
    is drawn from the prompt (best-of-N). Otherwise the best surviving state gets the rest.
    """

    name = "slg_adaptive"

    def _search(self):
        budget, batch, settings = self.budget, self.batch_size, self.config.adaptive
        plan = adaptive_plan(budget, settings, self.config.schedule(budget)[1])
        if plan is None:  # too small a budget to learn anything about a state: best-of-N
            yield [Request.uniform(ROOT, budget, batch)]
            return
        (root,) = yield [Request.uniform(ROOT, plan.root_rollouts, batch)]
        rewards = np.where(np.isnan(root.rewards), -np.inf, root.rewards)
        best = rewards.max(axis=1)
        scale = QuantileScale(root.rewards, settings.tail_fraction)
        states = self._pick_states(root, plan.num_candidates, stable=False)
        # A best prompt reward reached twice is an atom of a discrete reward: only a new level can
        # beat it, and for "at least one rollout above it" independent prompt draws beat a state's
        # correlated ones unless the state is known to be better, which no tail fit of ties shows.
        alive = (states != NO_NODE) & ~((rewards == best[:, None]).sum(axis=1) >= 2)[:, None]
        samples = np.full((batch, plan.num_candidates, sum(plan.shares)), np.nan)
        scores = np.full(samples.shape, np.nan)  # the samples on the prompt's quantile scale
        filled = 0
        spent = np.full(batch, plan.root_rollouts)
        value = np.full(alive.shape, -np.inf)
        for round_index, share in enumerate(plan.shares):
            asked = np.nonzero(alive.any(axis=0))[0]  # one request per candidate some episode still keeps
            if asked.size == 0:  # an empty round would end the search (``plan`` returns [] when done)
                break
            results = yield [Request.per_episode(np.where(alive[:, j], states[:, j], NO_NODE), share) for j in asked]
            for j, rollouts in zip(asked, results):
                got = rollouts.rewards[:, :share]
                samples[:, j, filled:filled + got.shape[1]] = np.where(alive[:, j:j + 1], got, np.nan)
            b_idx, j_idx = np.nonzero(alive)
            scores[b_idx, j_idx, filled:filled + share] = scale.scores(samples[b_idx, j_idx, filled:filled + share], b_idx)
            filled += share
            spent += share * alive.sum(axis=1)
            best = np.fmax(best, np.nanmax(samples[:, :, filled - share:filled], axis=(1, 2), initial=-np.inf))
            best_score = scale.scores(best[:, None])[:, 0]
            value, optimistic, prompt_value = self._final_best(scores[:, :, :filled], alive, best_score, budget - spent)
            alive &= optimistic >= prompt_value  # fresh prompt draws beat it even optimistically
            if round_index < len(plan.shares) - 1:  # successive halving
                keep = np.ceil(alive.sum(axis=1) * settings.keep_fraction).astype(np.int64)
                rank = np.argsort(np.argsort(np.where(alive, -value, np.inf), axis=1, kind="stable"), axis=1)
                alive &= rank < keep[:, None]
        rows = np.arange(batch)
        pick = np.argmax(np.where(alive, value, -np.inf), axis=1)
        use_state = alive[rows, pick] & self._shows_next_level(root.rewards, samples[rows, pick], best)
        self.selected = np.where(use_state, states[rows, pick], ROOT)
        left = budget - spent
        self.selected_prediction = self._predicted_best(root.rewards, samples[rows, pick], scale.tail_fit, use_state, left)
        if (left > 0).any():
            yield [Request.per_episode(self.selected, left)]

    def _final_best(self, scores, alive, best_score, left):
        """(value, optimistic, prompt value), each (B, C): the predicted final best of sending the
        ``left`` rollouts to each alive state, the same with the state's mean and sd at their upper
        ``confidence`` bounds, and that of sending them to the prompt; all on the prompt's quantile
        scale, where the prompt is N(0, 1) and a state the normal fitted to the upper tail of its
        rewards' scores. -inf where a state is not alive."""
        z = self.config.adaptive.confidence
        value = np.full(alive.shape, -np.inf)
        optimistic = np.full(alive.shape, -np.inf)
        prompt_value = np.full(alive.shape, np.inf)
        b_idx, j_idx = np.nonzero(alive)
        if b_idx.size == 0:
            return value, optimistic, prompt_value
        # SLG's own estimator on the prompt's scale: the normal fitted to the upper tail of a state's
        # scores (what its maximum depends on), its moments' standard errors from the tail's size.
        q = self.config.adaptive.tail_fraction
        _, lam, delta = tail_constants(q)
        mu, sigma, n_tail = self._fit_scores(scores[b_idx, j_idx], q)
        n_tail = np.maximum(n_tail, 2)
        upper_sigma = sigma * (1.0 + z / np.sqrt(2.0 * (n_tail - 1)))  # sd of an sd: sd / sqrt(2(k-1))
        upper_mu = mu + sigma * lam + z * sigma * np.sqrt(delta / n_tail) - upper_sigma * lam  # tail mean + z se
        k = b_idx.size
        u = expected_final_best(np.concatenate([mu, upper_mu, np.zeros(k)]),
                                np.concatenate([sigma, upper_sigma, np.ones(k)]),
                                np.tile(best_score[b_idx], 3), np.tile(left[b_idx], 3))
        value[b_idx, j_idx], optimistic[b_idx, j_idx], prompt_value[b_idx, j_idx] = u[:k], u[k:2 * k], u[2 * k:]
        return value, optimistic, prompt_value

    @staticmethod
    def _fit_scores(scores, tail_fraction):
        """Tail fit of each row of scores; rows holding NaN (dropped scores) are fitted on what they have."""
        missing = np.isnan(scores)
        if not missing.any():
            return fit_tail_full_rows(scores, tail_fraction)
        mu, sigma, n_tail, _ = fit_tail_rows(scores, tail_fraction)
        return mu, np.nan_to_num(sigma), n_tail

    @staticmethod
    def _shows_next_level(root_rewards, state_rewards, best):
        """False where the best reward is tied (an atom of a discrete reward) and the state never beat
        every prompt rollout: no tail model can tell whether it reaches the next level, fresh draws
        can. Continuous rewards are never tied, so this only ever concerns discrete ones."""
        tied = ((root_rewards == best[:, None]).sum(axis=1) + (state_rewards == best[:, None]).sum(axis=1)) >= 2
        state_top = np.max(np.where(np.isnan(state_rewards), -np.inf, state_rewards), axis=1)
        return ~tied | (state_top > np.nanmax(root_rewards, axis=1))

    def _predicted_best(self, root_rewards, state_rewards, root_fit, use_state, left):
        """Predicted V_n (reward units, n = the rollouts left) of the selected node, for the results:
        mu + sigma E(n) from its tail fit (the same q as the prompt's); with ``reported_predictor=blended``,
        the shared predictor's from the node's rewards (the prompt's root sample, or the state's)."""
        both = _stack_samples([root_rewards, state_rewards], max(root_rewards.shape[1], state_rewards.shape[1]))
        if self.config.reported_predictor == Predictor.blended:
            chosen = both[np.arange(len(use_state)), use_state.astype(np.int64)]  # column 1: the state's
            return self._predict_blended(chosen[:, None, :], left).value[:, 0]
        mu, sigma, _ = root_fit
        if use_state.any():
            chosen = state_rewards[use_state]
            width = int((~np.isnan(chosen)).sum(axis=1).min())
            state_mu, state_sigma, _ = fit_tail_full_rows(chosen[:, :width], self.config.adaptive.tail_fraction)
            mu, sigma = np.where(use_state, 0.0, mu), np.where(use_state, 0.0, sigma)
            mu[use_state], sigma[use_state] = state_mu, state_sigma
        values = expected_final_best(mu, sigma, np.full(mu.shape, -np.inf), np.maximum(left, 1))  # mu + sigma E(n)
        return _cut_at(values[:, None], self._episode_bounds(both))[:, 0]


@dataclass(frozen=True)
class AdaptivePlan:
    """How ``slg_adaptive`` splits budget N before it sees any reward."""

    root_rollouts: int        # drawn from the prompt first
    num_candidates: int       # the best root rollouts, screened as states
    shares: tuple[int, ...]   # rollouts per surviving candidate in each halving round


@functools.lru_cache(maxsize=4096)
def _cached_plan(budget: int, root_fraction: float, min_root_rollouts: int, explore_fraction: float,
                 screening_fraction: float, keep_fraction: float, min_rollouts: int, num_candidates: int) -> AdaptivePlan | None:
    root = max(round(root_fraction * budget), min(budget - min_rollouts, min_root_rollouts))
    if root < 2 * min_rollouts or budget - root < min_rollouts:
        return None
    explore = max(int(explore_fraction * budget) - root, min_rollouts)
    most = max(1, min(num_candidates, root // 2))  # from the root's upper half
    # The most candidates whose screening samples hold 2 min_rollouts (a state's first fit then has
    # 8 points with the defaults); failing that, two with min_rollouts each rather than one with more (the
    # rollouts of one state are correlated, so one state's many rollouts risk more than two's few).
    for screening_minimum in (2 * min_rollouts, min_rollouts):
        for candidates in range(most, 1, -1):
            shares = _halving_shares(candidates, explore, screening_fraction, keep_fraction)
            if shares[0] >= screening_minimum and min(shares) >= min_rollouts:
                return AdaptivePlan(root, candidates, shares)
    return AdaptivePlan(root, 1, (explore,))


def _halving_shares(candidates: int, explore: int, screening_fraction: float, keep_fraction: float) -> tuple[int, ...]:
    rounds = math.ceil(math.log(candidates) / -math.log(keep_fraction))
    if rounds == 1:
        return (explore // candidates,)
    survivors = [candidates]
    for _ in range(rounds - 1):
        survivors.append(max(1, math.ceil(survivors[-1] * keep_fraction)))
    screening = int(screening_fraction * explore)
    return (screening // candidates,) + tuple((explore - screening) // ((rounds - 1) * s) for s in survivors[1:])


def adaptive_plan(budget: int, settings: AdaptiveConfig, default_states: int) -> AdaptivePlan | None:
    """The split of ``slg_adaptive`` at budget N; None where it is plain best-of-N.

    Root: ``root_fraction`` of N, but at least ``min_root_rollouts`` (the sample the prompt's
    quantile scale is built from) where N leaves ``min_rollouts`` besides. Best-of-N when the root
    would hold fewer than 2 ``min_rollouts`` or leave fewer than ``min_rollouts`` (N < 12 with the
    defaults): no state could get a sample worth comparing with the prompt's. Candidates: the best
    root rollouts, at most ``num_candidates`` (2K) and no more than the root's upper half holds.
    Halving: R = ceil(log_{1/keep} C) rounds share the exploration budget (``explore_fraction`` of N
    minus the root); the first round (screening every candidate) gets ``screening_fraction`` of it,
    the others share the rest equally, each round's survivors getting equal shares; fewer
    candidates are tried until the screening share holds 2 ``min_rollouts`` (a state's tail fit
    then has ``min_rollouts`` points) and every later share ``min_rollouts``; where no two can,
    two with ``min_rollouts`` each, else one with the whole exploration budget. The rest is exploited.
    """
    wanted = settings.num_candidates or 2 * max(default_states, 1)
    return _cached_plan(int(budget), settings.root_fraction, settings.min_root_rollouts, settings.explore_fraction,
                        settings.screening_fraction, settings.keep_fraction, settings.min_rollouts, int(wanted))


class CollectStates(SearchPolicy):
    """Not a search: the sampling plan of ``slg collect``. S rollouts from the prompt, each cut into
    a state, then M rollouts from every state (S = ``num_states``, M = ``rollouts_per_node``), so
    that a reward bank holds S i.i.d. states of M rewards each."""

    name = "collect"

    def _search(self):
        num_states, per_state = self.config.num_states, self.config.rollouts_per_node
        if not num_states or not per_state or self.budget != num_states * (per_state + 1):
            raise ValueError(f"collect needs budget = S * (M + 1); got S={num_states}, M={per_state}, N={self.budget}")
        (root,) = yield [Request.uniform(ROOT, num_states, self.batch_size)]
        states = np.where(root.can_branch, np.arange(num_states)[None, :], NO_NODE)
        yield [Request.per_episode(states[:, k], per_state) for k in range(num_states)]


# The methods a user can run and compare; ``collect`` is driven by ``slg collect`` only.
POLICIES: dict[str, type[SearchPolicy]] = {cls.name: cls for cls in (BestOfN, ScalingLawGuided, AdaptiveSLG, Oracle)}
_INTERNAL_POLICIES: dict[str, type[SearchPolicy]] = {CollectStates.name: CollectStates}


def policy_class(method: str) -> type[SearchPolicy]:
    if method in _INTERNAL_POLICIES:
        return _INTERNAL_POLICIES[method]
    if method not in POLICIES:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(POLICIES)}")
    return POLICIES[method]
