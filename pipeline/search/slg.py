"""SLG as published (``slg``), and its perfect-information comparator (``oracle``).

Pure numpy. ``slg`` is the reference algorithm with the reference code's decisions by default
(docs/method.md, "SLG search"); ``oracle`` runs exactly like it but selects the exploit node by
the true V_N, which only simulated worlds and reward banks know.
"""

from __future__ import annotations

import numpy as np

from pipeline.search.base import SearchPolicy, _stack_samples
from pipeline.search.config import PredictionBudget, Predictor
from pipeline.search.protocol import NO_NODE, ROOT, Request


class ScalingLawGuided(SearchPolicy):
    """SLG as the reference code runs it (docs/method.md, "SLG search"), options in ``SearchConfig``.

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
        counts). Selecting by that predictor ranks nodes worse (docs/prediction.md, "What the policies do with
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
