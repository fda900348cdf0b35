"""SLG that shares (``slg_share``, the recommended method): the budget split between the prompt and its
best state, where the rewards say a tail cannot be extrapolated; ``slg_adaptive`` where they say it can.

Pure numpy. Both regimes start with the same prompt draws (``slg_adaptive``'s root), each of which
reveals the state it passed through (root rollouts with one prefix are one state) and is scored.

- **Continuous rewards** (root rewards do not repeat, ``_few_levels``): a state's rewards have an upper tail
  that SLG's normal fit extrapolates, and committing to a screened state pays (simulated worlds:
  18x best-of-N at N = 1000). These episodes run ``slg_adaptive`` unchanged.
- **Rewards with few levels** (root rewards repeat: a reward model reading the same response gives
  the same score, and short responses repeat): a state's best-of-n stops at its top level, so no
  tail fit says how far it goes, and all-in on one state throws away what fresh prompt draws keep
  finding. There the reward model's score of each revealed state's *prefix alone* (one short call
  per state, ``Rollouts.state_score``) tells the states apart: the state with the best prefix score
  gets ``share.state_share`` of what a root of ``share.root_fraction`` of N would leave, the rest goes
  to fresh prompt draws, if its prefix score is above that of an average prompt draw by
  ``share.prefix_gap`` root-reward standard deviations; otherwise the rest is best-of-N. The share
  comes in two halves: if the state's first half averages below the root's rewards (a prefix that
  misled), its second half goes to the prompt too.
  Measured on banks of the toy models' real outputs (docs/results.md): never below best-of-N, and
  above it at most budgets, where winner-takes-all loses to it.

Without prefix scores (a bank that has none, an engine that cannot score them) every episode runs
``slg_adaptive``. Below N = 12 the policy is best-of-N, as ``slg_adaptive``.
"""

from __future__ import annotations

import numpy as np

from pipeline.search.adaptive import AdaptiveSLG, adaptive_plan
from pipeline.search.protocol import NO_NODE, ROOT, Request, Rollouts


class SharedSLG(AdaptiveSLG):
    name = "slg_share"
    scores_prefixes = True

    def _search(self):
        budget, batch = self.budget, self.batch_size
        plan = adaptive_plan(budget, self.config.adaptive, self.config.schedule(budget)[1])
        if plan is None:  # too small a budget to learn anything about a state: best-of-N
            yield [Request.uniform(ROOT, budget, batch)]
            return
        (root,) = yield [Request.uniform(ROOT, plan.root_rollouts, batch)]
        few_levels = _few_levels(root)
        yield from _in_lockstep(self._share_rounds(root, few_levels), self._explore_and_exploit(root, plan, few_levels))

    def _share_rounds(self, root: Rollouts, mine: np.ndarray):
        """The episodes ``mine`` (rewards with few levels, prefix scores known): more prompt draws up
        to ``share.root_fraction`` of N, then the best-prefix state's share and fresh prompt draws,
        in two halves (the second only if the state's first half held up against the root)."""
        if not mine.any():
            return
        settings, budget = self.config.share, self.budget
        drawn = root.rewards.shape[1]  # the root request's count (a dropped score leaves a NaN, not a gap)
        more = np.where(mine, max(0, min(budget, round(settings.root_fraction * budget)) - drawn), 0)
        if more.any():
            (extra,) = yield [Request.per_episode(np.where(more > 0, ROOT, NO_NODE), more)]
            root = _joined(root, extra)
        state = self._best_prefix_state(root, mine)
        spent = np.where(mine, drawn + more, 0)
        to_state = np.where(state != NO_NODE, round(settings.state_share * (1.0 - settings.root_fraction) * budget), 0)
        to_state = np.minimum(to_state, budget - spent)
        to_root = np.where(mine, budget - spent - to_state, 0)
        # in two halves: the state's first half checks that its rollouts are not worse than the root's
        first_state, first_root = to_state // 2, to_root // 2
        (prompt_part, state_part) = yield [Request.per_episode(np.where(first_root > 0, ROOT, NO_NODE), first_root),
                                           Request.per_episode(np.where(first_state > 0, state, NO_NODE), first_state)]
        state_mean, root_mean = _mean_of_finite(state_part.rewards), _mean_of_finite(root.rewards)
        keep = (first_state > 0) & ~(state_mean < root_mean)
        rest_state = np.where(keep, to_state - first_state, 0)
        rest_root = np.where(mine, to_root - first_root + (to_state - first_state) - rest_state, 0)
        self.selected = np.where(keep, state, self.selected)
        if (rest_root + rest_state > 0).any():
            yield [Request.per_episode(np.where(rest_root > 0, ROOT, NO_NODE), rest_root),
                   Request.per_episode(np.where(rest_state > 0, state, NO_NODE), rest_state)]

    def _best_prefix_state(self, root: Rollouts, mine: np.ndarray) -> np.ndarray:
        """Per episode of ``mine``, the revealed state whose prefix scores best, where it scores
        ``share.prefix_gap`` root-reward sds above an average prompt draw's prefix; else NO_NODE."""
        rewards, score = root.rewards, root.state_score
        known = ~np.isnan(rewards) & ~np.isnan(score) & (root.state_index >= 0) & mine[:, None]
        with np.errstate(invalid="ignore"):
            spread = np.nanstd(rewards, axis=1)
            average = np.where(known, score, 0.0).sum(axis=1) / known.sum(axis=1)  # NaN where none is known
        top = np.argmax(np.where(known, score, -np.inf), axis=1)
        rows = np.arange(len(top))
        gap = score[rows, top] - average
        use = known.any(axis=1) & (spread > 0) & (gap > self.config.share.prefix_gap * spread)
        return np.where(use, root.state_index[rows, top], NO_NODE)


REPEAT_FRACTION = 0.1  # root rewards that repeat another, as a share of the root, that make a reward "few levels"


def _few_levels(root: Rollouts) -> np.ndarray:
    """Episodes whose root rewards repeat values (a reward with few levels, or responses that repeat)
    and whose prefixes were scored: the regime of ``_share_rounds``.

    A repeat counts where at least ``REPEAT_FRACTION`` of the root's rewards repeat another (at least
    one): replayed on a bank, rollouts through one state also repeat a reward where the bank redraws
    its finite pool, now and then (64 states of 10^4 rewards: at N = 4096 about one repeat in a root
    of 1024, where responses that really repeat make many)."""
    if root.state_score is None or root.state_index is None:
        return np.zeros(root.rewards.shape[0], dtype=bool)
    scored = (~np.isnan(root.state_score) & (root.state_index >= 0)).any(axis=1)
    ordered = np.sort(root.rewards, axis=1)  # NaN (a dropped score) sorts last and equals nothing
    repeats = (np.diff(ordered, axis=1) == 0).sum(axis=1)
    drawn = (~np.isnan(root.rewards)).sum(axis=1)
    return scored & (repeats >= np.maximum(1.0, REPEAT_FRACTION * drawn))


def _mean_of_finite(rewards: np.ndarray) -> np.ndarray:
    """Each row's mean reward, NaN (a dropped score) left out; NaN for a row with none."""
    kept = ~np.isnan(rewards)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(kept, rewards, 0.0).sum(axis=1) / kept.sum(axis=1)


def _joined(first: Rollouts, second: Rollouts) -> Rollouts:
    """Two requests' root rollouts as one (root-rollout indices run on from the first to the second)."""
    def both(a, b):
        return None if a is None or b is None else np.concatenate([a, b], axis=1)
    return Rollouts(np.concatenate([first.rewards, second.rewards], axis=1),
                    np.concatenate([first.can_branch, second.can_branch], axis=1),
                    both(first.correct, second.correct), both(first.state_index, second.state_index),
                    both(first.state_score, second.state_score))


def _in_lockstep(*paths):
    """Generators of request rounds for disjoint episodes, run as one: each round is their rounds
    side by side, and each gets its own part of the results."""
    pending = []
    for path in paths:
        requests = next(path, None)
        if requests is not None:
            pending.append((path, requests))
    while pending:
        results = yield [r for _, requests in pending for r in requests]
        following, start = [], 0
        for path, requests in pending:
            mine, start = results[start:start + len(requests)], start + len(requests)
            try:
                following.append((path, path.send(mine)))
            except StopIteration:
                pass
        pending = following
