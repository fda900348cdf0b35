"""Typed configuration of the search (what the policies read). Plain dataclasses for OmegaConf.

Paper symbols sit in comments beside the descriptive names. Choices are Enums (OmegaConf rejects
``Literal``). Cross-field checks live in :func:`validate_search_config`, called wherever a config
enters (CLI, driver) before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from pipeline.errors import ConfigError
from pipeline.schedule import default_schedule, validate_schedule


class ExpectedMaxRule(str, Enum):
    exact = "exact"          # the paper's E(n) = E[max of n standard normals]
    quantile = "quantile"    # the reference code's Phi^-1(1 - 1/n)


class PredictionBudget(str, Enum):
    total = "total"          # V_hat_N with the whole budget N, as the reference code
    remaining = "remaining"  # V_hat_n with n = the rollouts the exploit phase will actually get


class StateSelection(str, Enum):
    top_reward = "top_reward"  # prefixes of the K highest-reward root rollouts (reference code)
    random = "random"          # K random root rollouts (a literal reading of the paper)


@dataclass
class AdaptiveConfig:
    """``slg_adaptive``: successive halving of candidate states on their predicted value.

    The root gets ``root_fraction`` of N; the ``num_candidates`` highest-reward root rollouts become
    states (a large root sample is what finds good states); they get ``screening_rollouts`` each; rounds follow:
    the tails are refitted on all of a node's rewards, each node is scored by its predicted
    value for the budget left plus ``confidence`` standard errors of that prediction, the best
    ``keep_fraction`` survive and share the next round's rollouts equally. Exploration stops when
    one node is left or ``explore_fraction`` of N is spent; the best-scored node gets the rest.
    """

    root_fraction: float = 0.25                # share of N sampled from the prompt before states are cut
    num_candidates: int | None = None       # states screened; None: 2K of the default schedule
    screening_rollouts: int | None = None   # rollouts per node in the first round; None: m / 2
    keep_fraction: float = 0.5                 # share of nodes kept after each round
    explore_fraction: float = 0.7              # cap on the share of N spent before exploiting
    tail_fraction: float = 0.5                 # q of the refits (wider than SLG's: steadier rankings)
    confidence: float = 0.0                    # z of the upper-confidence bonus (0: plain prediction)


@dataclass
class SearchConfig:
    tail_fraction: float = 0.2                             # q in the paper
    expected_max_rule: ExpectedMaxRule = ExpectedMaxRule.exact
    prediction_budget: PredictionBudget = PredictionBudget.total
    state_selection: StateSelection = StateSelection.top_reward
    root_competes: bool = True                             # the prompt is a candidate for the exploit phase
    rollouts_per_node: int | None = None                # m; None: default_schedule(N)
    num_states: int | None = None                       # K; None: default_schedule(N)
    reward_upper_bound: float | None = None             # clip predictions here (bounded rewards)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)

    def schedule(self, budget: int) -> tuple[int, int]:
        """(m, K) for budget N: the explicit values where given, the default schedule otherwise."""
        m_default, k_default = default_schedule(budget)
        m = m_default if self.rollouts_per_node is None else self.rollouts_per_node
        k = k_default if self.num_states is None else self.num_states
        validate_schedule(budget, m, k)
        return m, k


def validate_search_config(config: SearchConfig, budgets) -> None:
    """Cross-field checks, raising ``ValueError`` that names the bad value."""
    if not 0.0 < config.tail_fraction < 1.0:
        raise ConfigError(f"search.tail_fraction must be in (0, 1), got {config.tail_fraction!r}")
    adaptive = config.adaptive
    if not 0.0 < adaptive.keep_fraction < 1.0:
        raise ConfigError(f"search.adaptive.keep_fraction must be in (0, 1), got {adaptive.keep_fraction!r}")
    if not 0.0 < adaptive.explore_fraction <= 1.0:
        raise ConfigError(f"search.adaptive.explore_fraction must be in (0, 1], got {adaptive.explore_fraction!r}")
    for name in ("root_fraction", "tail_fraction"):
        if not 0.0 < getattr(adaptive, name) < 1.0:
            raise ConfigError(f"search.adaptive.{name} must be in (0, 1), got {getattr(adaptive, name)!r}")
    if adaptive.confidence < 0:
        raise ConfigError(f"search.adaptive.confidence must be >= 0, got {adaptive.confidence!r}")
    for name in ("num_candidates", "screening_rollouts"):
        value = getattr(adaptive, name)
        if value is not None and value < 1:
            raise ConfigError(f"search.adaptive.{name} must be >= 1, got {value!r}")
    for budget in budgets:
        config.schedule(budget)
