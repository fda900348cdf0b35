"""Quality measures of the toy models: ROC AUC (overall and within a prompt) and unbiased pass@k."""

from __future__ import annotations

import numpy as np


def roc_auc(scores, labels) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting one half
    (the Mann-Whitney statistic); None when one class is missing."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def within_prompt_auc(scores_by_prompt, labels_by_prompt) -> tuple[float | None, int]:
    """Mean ROC AUC over the prompts that have both right and wrong samples, and how many those are."""
    values = [a for s, y in zip(scores_by_prompt, labels_by_prompt) if (a := roc_auc(s, y)) is not None]
    return (float(np.mean(values)) if values else None), len(values)


def pass_at_k(num_correct: int, num_samples: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if num_samples - num_correct < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(num_samples - num_correct + 1, num_samples + 1)))
