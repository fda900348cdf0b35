"""The base of every search policy: the round protocol as a generator, and helpers of the SLG family.

Pure numpy. Each policy is written once, as a generator that yields a round of requests and
receives their rollouts (see ``pipeline.search.protocol``), over a batch of independent episodes.
The same objects are driven by offline replay (thousands of episodes at once), by the Ray driver
(an episode per search, several searches of one method and budget to a policy) and by tests. A
policy never sees engines, seeds of other episodes or the ledger; it only says where the next
rollouts should come from. The methods themselves are in ``bon``, ``slg`` and ``adaptive``;
``methods`` names them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from pipeline.search.config import SearchConfig, StateSelection
from pipeline.search.protocol import NO_NODE, ROOT, Request, Rollouts
from pipeline.stats.predict import NodePredictions, predict_node_values
from pipeline.stats.tail import expected_max_std_normal, fit_tail_rows

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
                 rng: np.random.Generator | int | None = None, true_value: TrueValue | None = None):
        if budget < 1:
            raise ValueError(f"budget N must be >= 1, got {budget!r}")
        if self.needs_true_values and true_value is None:
            raise ValueError(f"method {self.name!r} needs true state values, which only simulated worlds "
                             "and reward banks have")
        self.budget = int(budget)
        self.batch_size = int(batch_size)
        self.config = config or SearchConfig()
        self._rng = rng  # a Generator, or the seed of one made where the policy first draws (None: seed 0)
        self.true_value = true_value
        self.selected = np.full(self.batch_size, ROOT, dtype=np.int64)
        self.selected_prediction = np.full(self.batch_size, np.nan)
        self._rounds = self._search()
        self._pending: list[Request] = next(self._rounds, [])

    @property
    def rng(self) -> np.random.Generator:
        """The policy's random numbers. The driver hands each search a seed, not a Generator: making
        one costs about 9 us, and a policy draws only with ``state_selection=random``."""
        if not isinstance(self._rng, np.random.Generator):
            self._rng = np.random.default_rng(0 if self._rng is None else self._rng)
        return self._rng

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
        return top_ranked(self._branch_scores(root), num_states, stable)

    def _branch_scores(self, root: Rollouts) -> np.ndarray:
        """(B, r): what ranks the root rollouts as states (``state_selection``): their rewards, or
        random numbers; -inf where a rollout cannot branch or was not scored."""
        usable = root.can_branch & ~np.isnan(root.rewards)
        if self.config.state_selection == StateSelection.top_reward:
            return np.where(usable, root.rewards, -np.inf)
        return np.where(usable, self.rng.random(root.rewards.shape), -np.inf)

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


def top_ranked(score: np.ndarray, num_states: int, stable: bool = True) -> np.ndarray:
    """(B, K) column indices of each row's K highest ``score`` (B, r), best first; NO_NODE for a score
    of -inf (not a candidate) and where a row has fewer than K. ``stable``: as in
    ``SearchPolicy._pick_states``."""
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

