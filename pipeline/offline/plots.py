"""Figures of the offline reports: prediction error against n or m (``slg curves --plot``) and
predicted best-of-n curves with their bands (``slg predict --plot``). matplotlib only in here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.offline.calibration import MODELS, POOL_SIZE


def report_figure(report: dict):
    """Mean |error|/sd, one panel per source: against n with a colour per m (the predictor solid,
    the tail fit dashed, the plug-in dotted), or, with n = the pool's size, against m with a
    colour per model. Returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report)
    columns = min(3, len(names))
    rows = (len(names) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False)
    for panel, name in zip(axes.ravel(), names):
        cells = report[name]["cells"]
        per_pool = any(c["n"] == POOL_SIZE for c in cells)
        series = [(0, cells)] if per_pool else [(m, [c for c in cells if c["m"] == m]) for m in sorted({c["m"] for c in cells})]
        for index, (m, mine) in enumerate(series):
            x = [c["m"] if per_pool else c["n"] for c in mine]
            for k, (model, style) in enumerate(zip(MODELS, ("-", "--", ":"))):
                label = model.replace("_", " ") if per_pool else f"m={m} {model.replace('_', ' ')}"
                colour = f"C{k}" if per_pool else f"C{index}"
                panel.plot(x, [c[model]["mean_abs_error"] for c in mine], style, marker="o", color=colour, label=label)
        panel.set_xscale("log", base=2 if per_pool else 10)
        panel.set_xlabel("m (n = the pool's size)" if per_pool else "n")
        panel.set_title(name, fontsize=9)
        panel.set_ylabel("mean |V_hat_n - V_n| / sd")
        panel.grid(True, alpha=0.3)
    for panel in axes.ravel()[len(names):]:
        panel.axis("off")
    axes[0, 0].legend(fontsize=6)
    figure.tight_layout()
    return figure


def plot_report(report: dict, path) -> None:
    _save(report_figure(report), path)


def prediction_figure(ids: list[str], n_grid: np.ndarray, value: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                      marked_n: list[int] | None = None):
    """Predicted best-of-n curves (one line per id over ``n_grid``) with their 95% bands
    (``fill_between``), on a log n axis; markers at ``marked_n``. Returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.0, 4.4))
    for index, name in enumerate(ids):
        colour = f"C{index % 10}"
        axis.plot(n_grid, value[index], color=colour, label=name)
        axis.fill_between(n_grid, lower[index], upper[index], color=colour, alpha=0.18, linewidth=0)
        if marked_n:
            at = np.isin(n_grid, marked_n)
            axis.plot(n_grid[at], value[index][at], "o", color=colour, markersize=4)
    axis.set_xscale("log")
    axis.set_xlabel("n (samples per prompt)")
    axis.set_ylabel("predicted best-of-n reward")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def plot_predictions(path, *args, **kwargs) -> None:
    _save(prediction_figure(*args, **kwargs), path)


def _save(figure, path) -> None:
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)  # as --out does
    figure.savefig(path, dpi=110)
    plt.close(figure)
