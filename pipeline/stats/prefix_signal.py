"""Whether a reward model's prefix scores track its rewards: the assumption behind ``slg_share``'s pick.

Pure numpy and scipy. ``slg_share`` gives its budget to the state whose prefix (the first T tokens,
scored alone) scores best. Where those scores say nothing of the rewards that follow, the pick is a
random state, and sharing the budget with it loses to best-of-N (docs/design-record.md,
"Prefix scores that say nothing"). One prompt's few states cannot tell (a slope over 16 states is too noisy to
gate a search on), but many prompts together can: this module measures, per prompt, the
correlation of a prompt draw's prefix score with its reward, and over prompts whether that
correlation is clearly below ``TRACKING``. It is a report, not part of any policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Prefix scores "track" rewards from this correlation of a prompt draw's prefix score and reward.
# The repository's toy banks measure +0.31 to +0.82 (the means over each bank's prompts,
# docs/design-record.md), and slg_share pays on all of them (on a bank kept outside it, at +0.30, it is
# level with best-of-N: docs/toy-models.md); the same banks with prefix scores shuffled within each prompt
# measure -0.01 and -0.02 (+- 0.10), where it falls to 0.81x of best-of-N at N = 64.
TRACKING = 0.2


def prefix_correlation(scores: np.ndarray, rewards: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Pearson correlation of paired prefix scores and rewards (1-D), each pair weighted by
    ``weights`` (None: equally), over the pairs where both are finite:
    ``sum w (s - s_bar)(r - r_bar) / sqrt(sum w (s - s_bar)^2 * sum w (r - r_bar)^2)`` with
    weighted means. NaN where fewer than 3 pairs, or one side without spread, leave it undefined."""
    scores, rewards = np.asarray(scores, dtype=float), np.asarray(rewards, dtype=float)
    weights = np.ones(scores.shape) if weights is None else np.asarray(weights, dtype=float)
    if not (scores.shape == rewards.shape == weights.shape):
        raise ValueError(f"scores, rewards and weights must have one shape, got {scores.shape}, {rewards.shape}, "
                         f"{weights.shape}")
    kept = np.isfinite(scores) & np.isfinite(rewards)
    if kept.sum() < 3:
        return math.nan
    s, r, w = scores[kept], rewards[kept], weights[kept] / weights[kept].sum()
    if s.min() == s.max() or r.min() == r.max():  # exactly: the variance of equal values rounds to ~1e-34, not 0
        return math.nan
    ds, dr = s - w @ s, r - w @ r
    var_s, var_r = w @ (ds * ds), w @ (dr * dr)
    value = float(w @ (ds * dr) / math.sqrt(var_s * var_r))  # NaN where both variances underflow
    return value if math.isnan(value) else min(1.0, max(-1.0, value))  # rounding can step past +-1


@dataclass(frozen=True)
class PrefixSignal:
    """The mean over prompts of their prefix correlations, with the half width of its 95% Student's t
    interval (a small run's few prompts get the width they need: 4.30 sds of the mean with 3)."""

    mean: float
    half_width: float
    num_prompts: int

    @classmethod
    def of(cls, correlations) -> PrefixSignal | None:
        """From per-prompt correlations (NaN where a prompt had none); None with fewer than 2 finite."""
        values = np.asarray(correlations, dtype=float)
        values = values[np.isfinite(values)]
        if values.size < 2:
            return None
        quantile = float(stats.t.ppf(0.975, values.size - 1))
        return cls(float(values.mean()), quantile * float(values.std(ddof=1)) / math.sqrt(values.size), int(values.size))

    @property
    def says_nothing(self) -> bool:
        """The whole 95% interval lies below ``TRACKING``: prefix scores clearly do not track rewards."""
        return self.mean + self.half_width < TRACKING

    def as_dict(self) -> dict:
        """As ``summary.json`` and ``slg replay --out`` write it (docs/formats.md)."""
        return {"mean": self.mean, "ci95": self.half_width, "prompts": self.num_prompts, "says_nothing": self.says_nothing}

    def describe(self) -> str:
        return f"correlation of prefix score and reward {self.mean:+.2f} +- {self.half_width:.2f} over {self.num_prompts} prompts"

    def warning(self, where: str) -> str:
        """The line a user reads where ``says_nothing``: what it measured, and what it costs."""
        return (f"{where}: prefix scores do not track rewards ({self.describe()}, below {TRACKING}): slg_share picks its "
                "state by them, and where rewards take few levels it can fall below best-of-N; slg_adaptive does not "
                "read them (docs/design-record.md, \"Prefix scores that say nothing\")")
