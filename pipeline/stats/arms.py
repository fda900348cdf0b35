"""The best of draws from several arms: its exact expected value, and the allocation of draws that
maximises it.

Pure numpy. An arm is any source of i.i.d. rewards with a known CDF: the prompt (a fresh state for
every draw) or one state. With n_i independent draws from arm i and a best reward b already in
hand, the final best is max(b, M), and on a common sorted support v_1 < ... < v_K

    P(max(b, M) <= v_k) = 1[b <= v_k] prod_i F_i(v_k)^{n_i},
    E[max(b, M)] = v_K - sum_{k<K} (v_{k+1} - v_k) P(max(b, M) <= v_k)        (b <= v_K).

Each term is concave in the counts (an exponential of a linear form, subtracted), so draws are
allocated greedily, one at a time to the arm that adds most, then improved by moving single draws
between arms until no move helps (on small cases the result equals the brute-force optimum; the
tests check it). These are the ceilings of ``pipeline.offline.ceilings``: what an allocation that
knew every distribution would reach.
"""

from __future__ import annotations

import numpy as np


def common_support(pools: list) -> tuple[np.ndarray, np.ndarray]:
    """(v, F): the sorted distinct values of all pools, and each pool's empirical CDF there (arms, K)."""
    values = np.unique(np.concatenate([np.asarray(p, dtype=float) for p in pools]))
    cdfs = np.stack([np.searchsorted(np.sort(np.asarray(p, dtype=float)), values, side="right") / len(p) for p in pools])
    return values, cdfs


def expected_best(values: np.ndarray, cdfs: np.ndarray, counts, best: float = -np.inf) -> float:
    """E[max(best, max of counts[i] draws from arm i)] for arms with CDFs ``cdfs`` (arms, K) on ``values``."""
    values, cdfs = _with_best(values, cdfs, best)
    return _expected_best(values, _log_cdf_of_max(cdfs, np.asarray(counts, dtype=float)), best)


def allocate_draws(values: np.ndarray, cdfs: np.ndarray, total: int, best: float = -np.inf,
                   steps: int = 512) -> np.ndarray:
    """Counts per arm (summing to ``total``) that maximise ``expected_best``: greedy in at most
    ``steps`` increments (one draw at a time up to that many draws), then single-draw moves."""
    values, cdfs = _with_best(values, cdfs, best)
    counts = np.zeros(cdfs.shape[0], dtype=np.int64)
    if best > values[-1]:  # no draw can add anything: all to the first arm
        counts[0] = total
        return counts
    with np.errstate(divide="ignore"):
        log_f = np.log(cdfs)
    log_p = np.zeros(len(values))  # log P(max <= v_k) of the draws so far (the support starts at the best)
    gaps = np.diff(values)
    size = max(1, -(-int(total) // steps))
    complements = {}  # add -> 1 - F_i(v_k)^add, reused by every step of that size
    left = int(total)
    while left > 0:
        add = min(size, left)
        if add not in complements:
            complements[add] = (1.0 - cdfs[:, :-1] ** add).T
        # adding draws to arm i multiplies P(max <= v_k) by F_i(v_k)^add: the gain
        gains = (gaps * np.exp(log_p[:-1])) @ complements[add]
        arm = int(np.argmax(gains))
        counts[arm] += add
        log_p = log_p + add * log_f[arm]
        left -= add
    return _improve_by_moves(values, cdfs, counts, best)


def _improve_by_moves(values, cdfs, counts, best):
    """Move single draws between arms while some move raises the expected best: every (giver, taker)
    pair is evaluated at once per giver, from the log CDF of the max without one of the giver's draws."""
    if best > values[-1]:  # nothing a draw brings can beat it
        return counts
    with np.errstate(divide="ignore"):
        log_f = np.log(cdfs)
    current = expected_best(values, cdfs, counts, best)
    reachable, gaps = (values >= best)[:-1], np.diff(values)
    while True:
        best_move, best_value = None, current
        for giver in np.nonzero(counts)[0]:
            fewer = counts.copy()
            fewer[giver] -= 1
            without = _log_cdf_of_max(cdfs, fewer.astype(float))  # the max's log CDF without that draw
            p = np.where(reachable, np.exp(without[:-1] + log_f[:, :-1]), 0.0)  # (takers, K - 1)
            trial = values[-1] - p @ gaps  # the expected best with the draw moved to each taker
            trial[giver] = -np.inf
            taker = int(np.argmax(trial))
            if trial[taker] > best_value + 1e-12 * max(1.0, abs(best_value)):
                best_move, best_value = fewer, trial[taker]
                best_move[taker] += 1
        if best_move is None:
            return counts
        counts, current = best_move, best_value


def _with_best(values: np.ndarray, cdfs: np.ndarray, best: float):
    """The support from ``best`` up: b in it (the final best can be exactly b; where b is not a value
    of the support, each CDF at b is its value just below b), the values below b left out (the final
    best never lies there, so their terms are 0).
    Paid discovery's allocations start from the best of a quarter of N, often near the top, and are
    cheaper on the shorter support."""
    if not np.isfinite(best) or best > values[-1]:
        return values, cdfs
    at = int(np.searchsorted(values, best))
    if values[at] == best:
        return values[at:], cdfs[:, at:]
    below = cdfs[:, at - 1:at] if at > 0 else np.zeros((cdfs.shape[0], 1))
    return np.insert(values[at:], 0, best), np.concatenate([below, cdfs[:, at:]], axis=1)


def _log_cdf_of_max(cdfs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    used = counts > 0
    if not used.any():
        return np.zeros(cdfs.shape[1])
    with np.errstate(divide="ignore"):
        return counts[used] @ np.log(cdfs[used])


def _expected_best(values: np.ndarray, log_p: np.ndarray, best: float) -> float:
    p = np.where(values < best, 0.0, np.exp(log_p))
    top = max(float(values[-1]), best)
    if best > values[-1]:
        return float(best)
    return float(top - np.dot(np.diff(values), p[:-1]))
