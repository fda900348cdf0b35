"""Typed configuration of the search (what the policies read). Plain dataclasses for OmegaConf.

Paper symbols sit in comments beside the descriptive names. Choices are Enums (OmegaConf rejects
``Literal``). Cross-field checks live in :func:`validate_search_config`, called wherever a config
enters (CLI, driver) before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from pipeline.errors import ConfigError
from pipeline.stats.schedule import default_schedule, validate_schedule


class ExpectedMaxRule(str, Enum):
    exact = "exact"          # the paper's E(n) = E[max of n standard normals]
    quantile = "quantile"    # the reference code's Phi^-1(1 - 1/n)


class PredictionBudget(str, Enum):
    total = "total"          # V_hat_N with the whole budget N, as the reference code
    remaining = "remaining"  # V_hat_n with n = the rollouts the exploit phase will actually get


class Predictor(str, Enum):
    tail_fit = "tail_fit"    # mu + sigma E(n) of the paper's tail fit (the reference code)
    blended = "blended"      # pipeline.stats.predict (slg predict's): plug-in to tail extension, ties and the bound honoured


class ChunkSchedule(str, Enum):
    memory = "memory"  # the paper's: rejections where the survivors fill the memory the rejected ones freed
    fixed = "fixed"    # a rejection every chunk_tokens tokens


class StateSelection(str, Enum):
    top_reward = "top_reward"  # prefixes of the K highest-reward root rollouts (reference code)
    random = "random"          # K random root rollouts (a literal reading of the paper)


@dataclass
class AdaptiveConfig:
    """``slg_adaptive`` (see ``pipeline.search.adaptive.adaptive_plan`` and ``AdaptiveSLG``).

    The prompt gets ``root_fraction`` of N first (a large sample finds good states, and makes
    committing to one of them safe: its best rollout is then about as good as the best of the
    fresh draws it displaces); its best rollouts become candidate states; halving rounds share the
    exploration budget up to ``explore_fraction`` of N; a state is dropped when fresh prompt draws
    beat it even at ``confidence`` standard errors in its favour; the best survivor gets the rest
    where fresh prompt draws do not beat it at its estimate, else the prompt does. Where the states'
    own rewards have tails heavier than normal, no normal fit says the prompt beats a state above an
    average prompt draw, and the comparison stands aside for it (``heavy_tail_check``).
    """

    root_fraction: float = 0.3                 # share of N drawn from the prompt before any state
    min_root_rollouts: int = 16                # ... but at least this many (the quantile scale's sample)
    num_candidates: int | None = None          # states screened; None: 2K of the default schedule
    min_rollouts: int = 4                      # the smallest sample of a state worth comparing (two: a single round's step)
    explore_fraction: float = 0.8              # root and halving rounds together; the rest is exploited
    screening_fraction: float = 0.5            # share of the halving budget in the first round (all candidates)
    keep_fraction: float = 0.5                 # share of states kept after each round
    tail_fraction: float = 0.95                # q of the normal fits on the quantile scale (states; the prompt beyond its data)
    confidence: float = 1.0                    # z of the comparison with fresh prompt draws that keeps a state in the rounds
    heavy_tail_check: bool = True              # states' tails heavier than normal: no prompt check for states above its median


@dataclass
class ShareConfig:
    """``slg_share``'s share rounds (``pipeline.search.share``): one state gets ``state_share`` of what a
    root of ``root_fraction`` of N would leave (0.75 x 0.5 = 0.375 of N), fresh prompt draws the rest.
    Where rewards take few levels, that state is the one whose prefix score plus ``reward_weight`` times
    its best root rollout's reward (each in root sds) ranks first, if its prefix scores ``prefix_gap``
    root-reward sds above an average prompt draw's, or (off by default) ``lead_gap`` above every other
    state the root drew, or (off a grid, ``below_best_lead``) it leads at all and its root rollouts
    stayed below the root's best; and in every case (from ``ungated_from`` too), if no other state the
    root drew twice or more has a prefix score within ``rival_gap`` root-reward sds of its own (a common
    rival, which fresh prompt draws reach as often). On a grid of levels (root rewards repeat across
    states) of states narrower than the spread between them, and read more precisely by a rollout than
    by their prefix score, only the states whose root rollout reached the best reward are candidates
    (``grid_best_level``).
    The state's share comes in two halves; the second goes to the prompt where the first averages
    below the root, (``repeat_check``) only repeats the state, or (``prompt_check``, continuous rewards whose root
    shows states narrower than the spread between them, or a first half far narrower than the root's
    states) is beaten by fresh prompt draws even optimistically. On continuous rewards the share
    rounds run only at budgets where ``slg_adaptive``'s plan halves its candidates at most once
    (N = 12-159 with the defaults), or beyond where the root's estimate of a state's own variance
    is below ``narrow_states`` times the rewards' variance, and only
    where the root's regression slope of reward on prefix score is at least ``min_prefix_slope``
    (prefix scores that track rewards); the state is then the one whose prefix score and root reward
    together say most about its mean, or the best root reward's where the root says the states' upper
    tails fall as prefix scores rise (``width_check``). From N = ``full_share_from`` up to ``commit_from`` the state
    gets all that root leaves rather than ``state_share`` of it (but for continuous episodes below
    N = 160 whose root shows states narrower than ``narrow_states``), and its second half goes to the
    prompt where at least ``modal_check`` of its first half is one reward; from N = ``commit_from``,
    off a grid, the root is not topped up and the state gets all the root leaves (in the same two
    halves, with the same modal check). From N = ``ungated_from``, off a grid, the few-levels pick
    shares (or commits) whether or not its prefix clears the gaps, unless a common rival reads as well;
    at any N, off a grid, it also shares where its state's root rollouts all stayed below the root's
    best reward and its prefix score beats the average draw's by ``below_best_lead`` root-reward sds."""

    state_share: float = 0.75      # of the budget after a root of root_fraction N
    root_fraction: float = 0.5     # sets the state's rollouts with state_share (the root itself is slg_adaptive's)
    prefix_gap: float = 0.5        # in standard deviations of the root sample's rewards
    lead_gap: float | None = None  # few levels: also share where the pick's prefix score leads every other drawn state's by this; None: off
    rival_gap: float | None = 0.1  # few levels, every pick: no share where another state drawn twice reads within this
    min_prefix_slope: float = 0.25  # reward units gained a unit of prefix score, in the root (continuous rewards)
    reward_weight: float = 0.25    # few levels: a root rollout's reward against its prefix's score in the pick, each in root sds
    repeat_check: bool = True      # the state's second half goes to the prompt too where its first half only repeats itself
    prompt_check: bool = True      # ... and, continuous, narrow-looking states or first half, where fresh prompt draws beat it
    grid_best_level: bool = True   # a grid of levels, narrow states: only states whose root rollout reached the best level
    narrow_states: float = 0.1     # continuous: a state's own variance < this x Var(r): share rounds from 160, state_share below; 0: never
    full_share_from: int | None = 64  # from this N to commit_from the state gets all a root of root_fraction N leaves; None: never
    modal_check: float | None = 0.6  # full shares, commitments: the second half to the prompt where this share of the first is one reward
    commit_from: int | None = 256  # few levels, off a grid: from this N the state gets all the root leaves; None: never
    ungated_from: int | None = 128  # few levels, off a grid: from this N the pick needs no prefix_gap (or lead_gap); None: never
    below_best_lead: float | None = 0.0  # few levels, off a grid: a pick below the root's best shares on this (finite) lead; None: off
    evidence_candidates: bool = True  # episodes that run slg_adaptive: candidates by prefix score and reward where those track
    width_check: bool = True          # ... and the share rounds' pick: by reward where the root says tails fall as prefix scores rise


@dataclass
class SpecRejectionConfig:
    """``spec_rejection`` (``pipeline.search.spec_rejection``): N responses grow in chunks; after each
    chunk the reward model scores them and the lowest-scoring ``rejection_rate`` of them stop."""

    rejection_rate: float = 0.5              # alpha in the paper (its experiments' value)
    chunk_tokens: int = 128                  # tokens to the first rejection (the paper: where its GPU memory fills)
    schedule: ChunkSchedule = ChunkSchedule.memory  # memory: rejections at chunk_tokens x (1 - alpha)^-k tokens


@dataclass
class SearchConfig:
    tail_fraction: float = 0.2                             # q in the paper
    expected_max_rule: ExpectedMaxRule = ExpectedMaxRule.quantile  # the reference code's E(N); exact: the paper's
    prediction_budget: PredictionBudget = PredictionBudget.total
    reported_predictor: Predictor = Predictor.tail_fit      # how slg and slg_adaptive predict the V_n they report
    state_selection: StateSelection = StateSelection.top_reward
    root_competes: bool = True                             # the prompt is a candidate for the exploit phase
    rollouts_per_node: int | None = None                # m; None: default_schedule(N)
    num_states: int | None = None                       # K; None: default_schedule(N)
    reward_upper_bound: float | None = None             # clip predictions here (bounded rewards)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    share: ShareConfig = field(default_factory=ShareConfig)
    spec_rejection: SpecRejectionConfig = field(default_factory=SpecRejectionConfig)

    def schedule(self, budget: int) -> tuple[int, int]:
        """(m, K) for budget N: the explicit values where given, the default schedule otherwise."""
        m_default, k_default = default_schedule(budget)
        m = m_default if self.rollouts_per_node is None else self.rollouts_per_node
        k = k_default if self.num_states is None else self.num_states
        validate_schedule(budget, m, k)
        return m, k


def validate_search_config(config: SearchConfig, budgets) -> None:
    """Cross-field checks, raising ``ConfigError`` that names the bad value."""
    if not 0.0 < config.tail_fraction < 1.0:
        raise ConfigError(f"search.tail_fraction must be in (0, 1), got {config.tail_fraction!r}")
    adaptive = config.adaptive
    for name in ("root_fraction", "keep_fraction", "tail_fraction", "screening_fraction"):
        if not 0.0 < getattr(adaptive, name) < 1.0:
            raise ConfigError(f"search.adaptive.{name} must be in (0, 1), got {getattr(adaptive, name)!r}")
    if not adaptive.root_fraction < adaptive.explore_fraction <= 1.0:
        raise ConfigError(f"search.adaptive.explore_fraction must be in (root_fraction, 1], "
                          f"got {adaptive.explore_fraction!r}")
    if not (math.isfinite(adaptive.confidence) and adaptive.confidence >= 0):  # inf: NaN bounds in the check
        raise ConfigError(f"search.adaptive.confidence must be a finite number >= 0, got {adaptive.confidence!r}")
    for name in ("state_share", "root_fraction"):
        if not 0.0 <= getattr(config.share, name) <= 1.0:
            raise ConfigError(f"search.share.{name} must be in [0, 1], got {getattr(config.share, name)!r}")
    if not (math.isfinite(config.share.prefix_gap) and config.share.prefix_gap >= 0):  # inf: 0 x inf where a root has no spread
        raise ConfigError(f"search.share.prefix_gap must be a finite number >= 0, got {config.share.prefix_gap!r}")
    for name in ("lead_gap", "rival_gap"):
        gap = getattr(config.share, name)
        if gap is not None and not (math.isfinite(gap) and gap >= 0):
            raise ConfigError(f"search.share.{name} must be a finite number >= 0 (null: off), got {gap!r}")
    below = config.share.below_best_lead
    if below is not None and not math.isfinite(below):  # -inf would share with every pick below the best: say so
        raise ConfigError(f"search.share.below_best_lead must be a finite number (null: off), got {below!r}")
    if not (math.isfinite(config.share.reward_weight) and config.share.reward_weight >= 0):
        raise ConfigError(f"search.share.reward_weight must be a finite number >= 0, got {config.share.reward_weight!r}")
    if not math.isfinite(config.share.min_prefix_slope):  # +inf would switch the share rounds off: say so with a number
        raise ConfigError(f"search.share.min_prefix_slope must be a finite number, got {config.share.min_prefix_slope!r}")
    if not 0.0 <= config.share.narrow_states <= 1.0:  # NaN too
        raise ConfigError(f"search.share.narrow_states must be in [0, 1], got {config.share.narrow_states!r}")
    for name in ("full_share_from", "commit_from", "ungated_from"):
        value = getattr(config.share, name)
        if value is not None and value < 1:
            raise ConfigError(f"search.share.{name} must be >= 1 (null: never), got {value!r}")
    if config.share.modal_check is not None and not 0.0 < config.share.modal_check <= 1.0:  # NaN too
        raise ConfigError(f"search.share.modal_check must be in (0, 1] (null: off), got {config.share.modal_check!r}")
    rejection = config.spec_rejection
    if not 0.0 <= rejection.rejection_rate < 1.0:  # NaN too
        raise ConfigError(f"search.spec_rejection.rejection_rate must be in [0, 1), got {rejection.rejection_rate!r}")
    if rejection.chunk_tokens < 1:
        raise ConfigError(f"search.spec_rejection.chunk_tokens must be >= 1, got {rejection.chunk_tokens!r}")
    if config.reward_upper_bound is not None and not math.isfinite(config.reward_upper_bound):
        raise ConfigError(f"search.reward_upper_bound must be a finite number (omit it for an unbounded reward), "
                          f"got {config.reward_upper_bound!r}")
    if adaptive.min_rollouts < 2:
        raise ConfigError(f"search.adaptive.min_rollouts must be >= 2 (a state's spread needs two), "
                          f"got {adaptive.min_rollouts!r}")
    for name in ("num_candidates", "min_root_rollouts"):
        value = getattr(adaptive, name)
        if value is not None and value < 1:
            raise ConfigError(f"search.adaptive.{name} must be >= 1, got {value!r}")
    for budget in budgets:
        config.schedule(budget)


def check_bound_covers(config: SearchConfig, highest: float, source: str) -> None:
    """Refuse a declared reward bound below the largest reward ``source`` can give (a world's upper
    bound, the largest reward of a bank): predictions cut there would tie the best nodes."""
    bound = config.reward_upper_bound
    if bound is not None and bound < highest:
        raise ConfigError(f"search.reward_upper_bound={bound:g} is below the rewards of {source} (up to {highest:g})")
