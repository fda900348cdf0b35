"""``slg predict``: best-of-n predicted for every reward list of a file, as output lines and curves.

Pure numpy. The reward lists of a file are one group by default (they share the reward source's
tie and tail statistics, ``pipeline.stats.predict``); ``independent`` predicts each from its own.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import ConfigError
from pipeline.offline.parquet_banks import A_REWARD, REWARD_LIMIT
from pipeline.stats.predict import Predictions, predict_rows


def reward_table(rows: list[list[float]]) -> np.ndarray:
    """Reward lists as one NaN-padded (lists, longest) array."""
    table = np.full((len(rows), max(len(r) for r in rows)), np.nan)
    for i, values in enumerate(rows):
        table[i, : len(values)] = values
    return table


def check_upper_bound(ids: list[str], table: np.ndarray, upper_bound: float | None) -> None:
    """A declared bound must be finite and at least every reward (``ConfigError`` naming the id)."""
    if upper_bound is None:
        return
    if not abs(upper_bound) <= REWARD_LIMIT:  # as a reward: the statistics square and sum it
        raise ConfigError(f"--upper-bound must be {A_REWARD}, got {upper_bound!r}")
    over = np.nanmax(table, axis=1) > upper_bound
    if over.any():
        i = int(np.argmax(over))
        raise ConfigError(f"--upper-bound {upper_bound:g} is below a reward of id {ids[i]!r} ({np.nanmax(table[i]):g})")


def predict_file(ids: list[str], rows: list[list[float]], n: list[int], upper_bound: float | None = None,
                 independent: bool = False) -> tuple[list[dict], Predictions, np.ndarray]:
    """(one output line per (id, n), the predictions, the reward table) for ``slg predict``."""
    table = reward_table(rows)
    check_upper_bound(ids, table, upper_bound)
    groups = None if independent else np.zeros(len(rows), dtype=int)
    result = predict_rows(table, n, upper_bound, groups=groups)
    lines = []
    for i, name in enumerate(ids):
        flags = result.flag_names(i)
        for j, count in enumerate(n):
            lines.append({"id": name, "n": int(count), "predicted": float(result.value[i, j]),
                          "lower": float(result.lower[i, j]), "upper": float(result.upper[i, j]),
                          "model": result.model(i, j), "flags": flags, "weight": round(float(result.weight[i, j]), 4),
                          "plug_in": float(result.plug_in[i, j]), "extension": float(result.extension[i, j]),
                          "tail_fit": float(result.tail_fit[i, j]), "samples": len(rows[i])})
    return lines, result, table


def predicted_curves(table: np.ndarray, result: Predictions, n: list[int], upper_bound: float | None, shown: int):
    """(n grid, curves) of the first ``shown`` rows from 1 to max(n), with the file's pooled
    statistics (as the predictions themselves)."""
    grid = np.unique(np.concatenate([np.round(np.geomspace(1, max(n), 40)), n]).astype(int))
    curves = predict_rows(table[:shown], grid, upper_bound, continuity=result.continuity[:shown],
                          top_level=result.top_level[:shown], heavy=result.flags[:shown])
    return grid, curves
