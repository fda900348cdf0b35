"""The search policies: BoN, SLG (the reference algorithm), adaptive SLG, and the oracle.

Pure numpy. Each policy is written once, as a generator that yields a round of requests and
receives their rollouts (see ``pipeline.policy``), over a batch of independent episodes. The same
objects are driven by offline replay (thousands of episodes at once), by the Ray driver (one
episode per prompt) and by tests. A policy never sees engines, seeds of other episodes or the
ledger; it only says where the next rollouts should come from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from pipeline.config import PredictionBudget, SearchConfig, StateSelection
from pipeline.policy import NO_NODE, ROOT, Request, Rollouts
from pipeline.tail import expected_max_std_normal, fit_tail_rows, prediction_stderr

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

    def _pick_states(self, root: Rollouts, num_states: int) -> np.ndarray:
        """(B, K) root-rollout indices that become states; NO_NODE where too few can branch."""
        if self.config.state_selection == StateSelection.top_reward:
            score = np.where(root.can_branch & ~np.isnan(root.rewards), root.rewards, -np.inf)
        else:
            score = np.where(root.can_branch & ~np.isnan(root.rewards), self.rng.random(root.rewards.shape), -np.inf)
        k = min(num_states, score.shape[1])
        order = np.argsort(-score, axis=1, kind="stable")[:, :k]
        chosen = np.where(np.take_along_axis(score, order, axis=1) > -np.inf, order, NO_NODE)
        if k < num_states:
            chosen = np.pad(chosen, ((0, 0), (0, num_states - k)), constant_values=NO_NODE)
        return chosen

    def _predict(self, samples: np.ndarray, n: np.ndarray, tail_fraction: float | None = None) -> np.ndarray:
        """Predicted V_n per node from its samples (B, nodes, L) (NaN-padded); n is (B,)."""
        batch, nodes, length = samples.shape
        q = self.config.tail_fraction if tail_fraction is None else tail_fraction
        mu, sigma, _, _ = fit_tail_rows(samples.reshape(batch * nodes, length), q)
        values = mu.reshape(batch, nodes) + sigma.reshape(batch, nodes) * self._expected_max(n)[:, None]
        if self.config.reward_upper_bound is not None:
            values = np.minimum(values, self.config.reward_upper_bound)
        return values

    def _expected_max(self, n: np.ndarray) -> np.ndarray:
        rule = self.config.expected_max_rule.value
        unique, inverse = np.unique(np.maximum(n, 1), return_inverse=True)
        return np.array([expected_max_std_normal(int(k), rule) for k in unique])[inverse.ravel()].reshape(n.shape)


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
        values = np.where(nodes == NO_NODE, -np.inf, values)
        if not self.config.root_competes:
            has_state = (nodes[:, 1:] != NO_NODE).any(axis=1)
            values[:, 0] = np.where(has_state, -np.inf, values[:, 0])
        pick = np.argmax(values, axis=1)
        rows = np.arange(batch)
        self.selected = nodes[rows, pick]
        self.selected_prediction = values[rows, pick]
        if (left > 0).any():
            yield [Request.per_episode(self.selected, left)]

    def _node_values(self, nodes: np.ndarray, samples: np.ndarray, horizon: np.ndarray) -> np.ndarray:
        return self._predict(samples, horizon)


class Oracle(ScalingLawGuided):
    """``slg`` with perfect information: the same rollouts and split, selection by the true V_N."""

    name = "oracle"
    needs_true_values = True

    def _node_values(self, nodes, samples, horizon):
        return self.true_value(np.where(nodes == NO_NODE, ROOT, nodes), horizon)


class AdaptiveSLG(SearchPolicy):
    """Multi-round SLG: successive halving of candidate states on their predicted value.

    See ``AdaptiveConfig`` for the rule. The root is a candidate like any state (its screening
    sample is its first root rollouts), unless ``root_competes`` is off.
    """

    name = "slg_adaptive"

    def _search(self):
        budget, batch, settings = self.budget, self.batch_size, self.config.adaptive
        m, num_states = self.config.schedule(budget)
        num_candidates = settings.num_candidates or 2 * max(num_states, 1)
        first = settings.screening_rollouts or max(1, m // 2)
        root_size = max(1, round(settings.root_fraction * budget))
        num_candidates = max(0, min(num_candidates, root_size, (budget - root_size) // first))
        if num_candidates == 0 or root_size >= budget:
            yield [Request.uniform(ROOT, budget, batch)]
            return
        (root,) = yield [Request.uniform(ROOT, root_size, batch)]
        states = self._pick_states(root, num_candidates)
        screened = yield [Request.per_episode(states[:, k], first) for k in range(num_candidates)]
        nodes = np.concatenate([np.full((batch, 1), ROOT), states], axis=1)
        exists = nodes != NO_NODE
        explore_cap = max(int(settings.explore_fraction * budget), root_size + int(exists[:, 1:].sum(axis=1).max()) * first)
        samples = _stack_samples([root.rewards] + [s.rewards for s in screened], explore_cap)
        counts = np.where(exists, first, 0)
        counts[:, 0] = root_size
        spent = counts.sum(axis=1)
        alive = exists.copy()
        if not self.config.root_competes:
            alive[:, 0] = ~exists[:, 1:].any(axis=1)
        num_rounds = max(1, math.ceil(math.log(num_candidates + 1) / -math.log(settings.keep_fraction)))
        round_budget = (explore_cap - spent) // num_rounds
        rows = np.arange(batch)
        for _ in range(num_rounds):
            score = self._score(samples, counts, alive, budget - spent)
            num_alive = alive.sum(axis=1)
            keep = np.maximum(1, np.ceil(num_alive * settings.keep_fraction)).astype(np.int64)
            rank = np.argsort(np.argsort(-score, axis=1, kind="stable"), axis=1)
            alive &= rank < keep[:, None]
            share = np.where(num_alive > 1, round_budget // keep, 0)
            share = np.minimum(share, (explore_cap - spent) // keep)
            if not (share > 0).any():
                break
            grant = np.where(alive, share[:, None], 0)
            results = yield [Request.per_episode(nodes[:, j], grant[:, j]) for j in range(nodes.shape[1])]
            for j, rollouts in enumerate(results):
                width = rollouts.rewards.shape[1]
                if width:
                    slots = counts[:, j:j + 1] + np.arange(width)[None, :]
                    valid = (np.arange(width)[None, :] < grant[:, j:j + 1]) & (slots < explore_cap)
                    b_idx, k_idx = np.nonzero(valid)
                    samples[b_idx, j, slots[b_idx, k_idx]] = rollouts.rewards[b_idx, k_idx]
            counts += grant
            spent += grant.sum(axis=1)
        score = self._score(samples, counts, alive, budget - spent)
        pick = np.argmax(score, axis=1)
        self.selected = nodes[rows, pick]
        self.selected_prediction = self._predict(samples[rows, pick][:, None, :], budget - spent,
                                                  settings.tail_fraction)[:, 0]
        left = budget - spent
        if (left > 0).any():
            yield [Request.per_episode(self.selected, left)]

    def _score(self, samples: np.ndarray, counts: np.ndarray, alive: np.ndarray, left: np.ndarray) -> np.ndarray:
        """Predicted value for the budget left plus the upper-confidence bonus; -inf where not alive."""
        score = np.full(alive.shape, -np.inf)
        b_idx, j_idx = np.nonzero(alive)
        if b_idx.size == 0:
            return score
        width = int(counts[b_idx, j_idx].max())
        settings = self.config.adaptive
        mu, sigma, n_tail, _ = fit_tail_rows(samples[b_idx, j_idx, :width], settings.tail_fraction)
        e = self._expected_max(np.maximum(left, 1))[b_idx]
        value = mu + sigma * e
        if settings.confidence:
            value = value + settings.confidence * prediction_stderr(sigma, n_tail, e, settings.tail_fraction)
        if self.config.reward_upper_bound is not None:
            value = np.minimum(value, self.config.reward_upper_bound)
        score[b_idx, j_idx] = np.nan_to_num(value, nan=-np.inf)
        return score


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
