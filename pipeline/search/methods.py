"""The search methods a user can run and compare, by name, and the one check of a method or budget list.

Every command and config that takes methods or budgets (``slg run``, ``slg replay``, ``slg bench``,
the ``replay`` library) checks them here, so the rules and their messages are the same everywhere.
"""

from __future__ import annotations

from pipeline.errors import ConfigError
from pipeline.search.adaptive import AdaptiveSLG
from pipeline.search.base import SearchPolicy
from pipeline.search.bon import BestOfN
from pipeline.search.share import SharedSLG
from pipeline.search.slg import Oracle, ScalingLawGuided
from pipeline.search.spec_rejection import SpeculativeRejection

METHODS: dict[str, type[SearchPolicy]] = {cls.name: cls for cls in (BestOfN, ScalingLawGuided, AdaptiveSLG, SharedSLG, Oracle,
                                                                    SpeculativeRejection)}
DEFAULT_METHODS = ["bon", "slg", "slg_adaptive", "slg_share", "oracle"]


def policy_class(method: str) -> type[SearchPolicy]:
    """The policy of a method name; ``ConfigError`` naming the allowed ones for an unknown name."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    return METHODS[method]


def check_methods(methods, where: str = "methods") -> None:
    """At least one method, each known, none twice (its results would be counted twice)."""
    if not methods:
        raise ConfigError(f"{where} is empty: name at least one of {', '.join(sorted(METHODS))}")
    for method in methods:
        policy_class(method)
    _check_distinct(methods, where, "method")


MAX_BUDGET = 10**7  # a replay holds a reward a rollout: 80 MB an episode at 10^7, and an episode per prompt and repeat


def check_budgets(budgets, where: str = "budgets") -> None:
    """At least one budget, each a positive integer up to ``MAX_BUDGET``, none twice (its interval
    would narrow by sqrt(2))."""
    if not budgets:
        raise ConfigError(f"{where} is empty: give at least one budget N")
    for budget in budgets:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ConfigError(f"budget N must be a positive integer, got {budget!r} in {where}")
        if budget > MAX_BUDGET:
            raise ConfigError(f"budget N must be at most {MAX_BUDGET:,} (a replay holds 8 bytes a rollout of each "
                              f"episode), got {budget:,} in {where}")
    _check_distinct(budgets, where, "budget")


def _check_distinct(values, where: str, what: str) -> None:
    repeated = [value for index, value in enumerate(values) if value in list(values)[:index]]
    if repeated:
        raise ConfigError(f"{where} lists {what} {repeated[0]!r} twice: {list(values)}")
