"""Searches that share one policy object: the driver's batches of episodes.

A search policy plays B independent episodes side by side (``pipeline.search.base``), and what one
round costs it is mostly numpy's fixed cost per call, which a policy of one episode pays in full
for every search. The driver therefore gives the searches of one method, budget and search config
that sit near each other in its queue (``driver.policy_batch`` of them at most) one policy with an
episode each: every round, each member takes its row of the policy's requests, and once every
member's round is scored, their results, stacked row by row, go to the policy in one call.

The episodes of a policy are independent, and every rollout's seed is its search's own, so a
search draws the same rollouts and reports the same result in a group as alone; only the round
barrier is shared (a member whose row asks nothing in a round waits for the others). Policies that
draw random numbers (``search.state_selection=random``) or read a search's true values (the
``oracle``) run one search each: one random stream or one world per policy would tie a search's
result to its group.

One field can differ in its last digits: the prediction a policy reports with
``search.reported_predictor=blended``, whose matrix products round by how many rows they hold (it
selects nothing). And ``QuantileScale`` shifts each row into a band of its own on one axis, so a
reward within about 1e-13 of one of its row's knots could in principle land on the knot's other
side in a larger group; never seen.
"""

from __future__ import annotations

import numpy as np

from pipeline.search.config import StateSelection
from pipeline.search.protocol import Rollouts


class PolicyGroup:
    """The policy of its member searches (``SearchRecord``s of one ``batches`` group; member ``row``
    plays the policy's episode ``row``), made with the random ``seed`` and the ``true_value`` hook
    its policy class may need. ``waiting``: members whose current round is not scored yet."""

    __slots__ = ("policy", "members", "waiting")

    def __init__(self, members: list, seed: int, true_value=None):
        lead = members[0].spec
        self.policy = lead.policy_class(lead.budget, len(members), lead.search_config, rng=seed, true_value=true_value)
        self.members, self.waiting = members, 0
        for search in members:
            search.group = self

    def take_round(self, requests: list) -> list[tuple]:
        """(member, slot) of every member's row of the policy's next round (``SearchRecord.take_round``);
        counts the members that now wait for scores."""
        slots = [(search, slot) for search in self.members for slot in search.take_round(requests)]
        self.waiting = sum(search.waiting > 0 for search in self.members)
        return slots

    def member_scored(self) -> bool:
        """One member's round is scored; whether it was the last one the group waited for."""
        self.waiting -= 1
        return self.waiting == 0

    def round_results(self) -> list[Rollouts]:
        """This round's results, every member's row stacked, in the order of the policy's requests."""
        rows = [member.round_results() for member in self.members]
        if len(rows) == 1:
            return rows[0]
        return [stacked(parts) for parts in zip(*rows)]


def group_size(settings, in_order_window: int | None) -> int:
    """The most searches a policy plays: ``driver.policy_batch``, but at most half of the searches in
    flight at once (``driver.max_concurrent_prompts``, or fewer in an order window: the driver's
    ``within_window``). A group waits for its slowest member's round; two groups or more take turns
    and keep the replicas busy (``slg collect`` holds as few as 2 to 6 prompts in flight)."""
    in_flight = min(settings.max_concurrent_prompts, in_order_window or settings.max_concurrent_prompts)
    return max(1, min(settings.policy_batch, in_flight // 2))


def batches(specs: list, size: int) -> list[list]:
    """The searches ``specs`` (``SearchSpec``s, in the driver's order) cut into the groups that share
    a policy: each search joins the open group of its method, budget and config until that holds
    ``size``; groups come in the order of their first search. A policy that draws random numbers or
    reads true values gets a group of its own (the module's docstring)."""
    groups, open_groups = [], {}
    for spec in specs:
        if not can_share(spec):
            groups.append([spec])
            continue
        key = (spec.method, spec.budget, spec.policy_class, id(spec.search_config))  # (configs are not hashable: one object, one group)
        group = open_groups.get(key)
        if group is None or len(group) >= size:
            group = open_groups[key] = []
            groups.append(group)
        group.append(spec)
    return groups


def can_share(spec) -> bool:
    """Whether the search's policy can play it beside other searches' episodes."""
    selection = getattr(spec.search_config, "state_selection", StateSelection.top_reward)  # (``slg collect``'s plan has none)
    return not spec.policy_class.needs_true_values and selection == StateSelection.top_reward


def stacked(parts: list[Rollouts]) -> Rollouts:
    """One request's results of several one-episode searches as one (B, width) ``Rollouts``, each row
    padded past its own count as a replay source pads it: NaN rewards and prefix scores, no branch,
    not correct, no state, not finished."""
    width = max(part.rewards.shape[1] for part in parts)

    def column(name: str, fill):
        arrays = [getattr(part, name) for part in parts]
        if arrays[0] is None:  # (per request: every member's or none)
            return None
        if all(array.shape[1] == width for array in arrays):
            return np.concatenate(arrays)
        out = np.full((len(arrays), width), fill, dtype=arrays[0].dtype)
        for row, array in enumerate(arrays):
            out[row, :array.shape[1]] = array[0]
        return out

    return Rollouts(column("rewards", np.nan), column("can_branch", False), column("correct", False),
                    column("state_index", -1), column("state_score", np.nan), column("finished", False))
