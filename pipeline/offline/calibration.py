"""How well best-of-n is predicted from m samples: the predictor, the paper's tail fit and the
plug-in against exact values, on finite reward pools and on simulated worlds.

Pure numpy (matplotlib only inside the plotting functions). A pool is one prompt's responses in
the real data of ``data/real``, one state of a reward bank, or one state of a simulated world. For
each pool, ``repeats`` samples of m rewards are drawn (with replacement), ``pipeline.stats.predict``
predicts V_n from each, and the prediction is compared with the pool's exact E[max of n]
(``pipeline.stats.pool``; a world state's own value for worlds). Errors are in units of the pool's
standard deviation, so reward scales compare. The samples of one repeat form one batch, as a
user's file would (one group: they share the reward source). ``slg curves`` prints this report;
``plot_predictions`` draws ``slg predict``'s curves.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.stats.pool import expected_max_of_pool
from pipeline.stats.predict import FLAGS, predict_rows

POOL_SIZE = "pool"  # n = the pool's own size (the real-data protocol of README "Prediction")
MODELS = ("predicted", "tail_fit", "plug_in")
REAL_DATA = Path(__file__).resolve().parents[2] / "data" / "real"


class EmpiricalPool:
    """A finite pool of rewards: draws with replacement; the truth is the pool's exact E[max of n]."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=float)
        self.size, self.spread = self.values.size, float(self.values.std())
        self._truth: dict[int, float] = {}

    def draw(self, rng, repeats: int, m: int) -> np.ndarray:
        return rng.choice(self.values, size=(repeats, m))

    def truth(self, n: int) -> float:
        if n not in self._truth:
            self._truth[n] = expected_max_of_pool(self.values, n)
        return self._truth[n]


class WorldState:
    """One state of a simulated world: exact V_n from the world, draws from its reward distribution."""

    def __init__(self, world, latent: float, rng):
        self.world, self.latent = world, float(latent)
        reference, _ = world.sample_rewards(rng, np.full(4000, self.latent))
        self.size, self.spread = None, float(reference.std())

    def draw(self, rng, repeats: int, m: int) -> np.ndarray:
        return self.world.sample_rewards(rng, np.full((repeats, m), self.latent))[0]

    def truth(self, n: int) -> float:
        return float(self.world.state_value(np.array([self.latent]), n)[0])


def world_states(world, num_states: int, seed: int = 0) -> list[WorldState]:
    rng = np.random.default_rng([seed, 1])
    return [WorldState(world, latent, rng) for latent in world.sample_states(rng, (num_states,))]


def calibrate(pools: list, m_values: list[int], n_values, repeats: int, seed: int = 0,
              upper_bound: float | None = None) -> dict:
    """Error summaries per (m, n) over all pools and repeats; see the module docstring.

    ``pools``: reward lists (exact pools) or objects with ``draw``, ``truth``, ``size`` and
    ``spread`` (``WorldState``); pools with no spread are left out (no scale for the error, and
    every method that honours ties predicts them exactly). ``n_values``: a list of n, or
    ``POOL_SIZE`` for each pool's own size. Per cell, for each of ``MODELS``: median and mean
    |error| / sd and the mean error / sd (bias); for the predictor also how often its 95%
    interval covers the truth, and for each flag the share of samples that raise it; with
    ``upper_bound``, the share of predictions or interval ends above it (``above_bound``).
    """
    if repeats < 1 or not m_values or min(m_values) < 1:
        raise ConfigError("calibrate needs repeats >= 1 and a non-empty list of m >= 1")
    per_pool_n = n_values == POOL_SIZE
    if not per_pool_n and (not n_values or min(n_values) < 1):
        raise ConfigError(f"n must be {POOL_SIZE!r} or a non-empty list of integers >= 1, got {n_values!r}")
    pools = [p if hasattr(p, "draw") else EmpiricalPool(p) for p in pools]
    pools = [p for p in pools if p.spread > 0]
    if not pools:
        raise ConfigError("no pool with any spread to calibrate on")
    if per_pool_n and any(p.size is None for p in pools):
        raise ConfigError(f"n = {POOL_SIZE!r} needs finite pools")
    columns = [POOL_SIZE] if per_pool_n else list(n_values)
    rng = np.random.default_rng(seed)
    spread = np.repeat([p.spread for p in pools], repeats)
    report = {"pools": len(pools), "repeats": repeats, "upper_bound": upper_bound, "cells": []}
    for m in m_values:
        rows = np.concatenate([p.draw(rng, repeats, m) for p in pools])          # pool-major
        n_table = (np.repeat([p.size for p in pools], repeats)[:, None] if per_pool_n
                   else np.broadcast_to(np.asarray(columns, dtype=float), (len(rows), len(columns))))
        result = predict_rows(rows, n_table, upper_bound, groups=np.tile(np.arange(repeats), len(pools)))
        truth = np.array([[p.truth(int(n)) for n in ([p.size] if per_pool_n else columns)] for p in pools])
        truth = np.repeat(truth, repeats, axis=0)
        for j, column in enumerate(columns):
            report["cells"].append(_cell(m, column, result, j, truth[:, j], spread, upper_bound))
    return report


def _cell(m, n, result, column, truth, spread, upper_bound) -> dict:
    cell = {"m": m, "n": n, "cases": int(len(truth))}
    for name in MODELS:
        error = (getattr(result, "value" if name == "predicted" else name)[:, column] - truth) / spread
        cell[name] = {"median_abs_error": float(np.median(np.abs(error))), "mean_abs_error": float(np.mean(np.abs(error))),
                      "bias": float(np.mean(error))}
    tolerance = 1e-9 * spread
    lower, upper = result.lower[:, column], result.upper[:, column]
    cell["interval_coverage"] = float(np.mean((lower <= truth + tolerance) & (truth <= upper + tolerance)))
    cell["flagged"] = {name: float(np.mean(result.flags >> bit & 1)) for bit, name in enumerate(FLAGS)}
    missed = ~((lower <= truth + tolerance) & (truth <= upper + tolerance))
    heavy = result.flags >> FLAGS.index("heavy_tail") & 1
    cell["heavy_tail_among_missed"] = float(heavy[missed].mean()) if missed.any() else None
    if upper_bound is not None:
        cell["above_bound"] = float(np.mean((result.value[:, column] > upper_bound) | (upper > upper_bound)
                                            | (lower > upper_bound)))
    return cell


# --- the real data of data/real ----------------------------------------------------------------

REAL_SETS = {
    # folder: (loader, the largest reward the scorer can give or None)
    "genrm_gpqa_llama33_70b": ("_load_genrm", 1.0),
    "humaneval_codet_codegen16b": ("_load_humaneval", 1.0),
    "alpacaeval_bon16_tulu2_gpt4judge": ("_load_alpacaeval", None),
    "math500_bon256_llama32_1b_rlhflow_prm": ("_load_math500", 1.0),
}


def real_pools(path=REAL_DATA) -> dict[str, tuple[list[np.ndarray], float | None]]:
    """Prompt-level reward pools of the real data sets under ``path`` (the folder, or one set)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"real data folder {str(path)!r} does not exist")
    folders = [path] if path.name in REAL_SETS else [path / name for name in REAL_SETS if (path / name).is_dir()]
    if not folders:
        raise ConfigError(f"no known real data set under {str(path)!r}; expected one of {sorted(REAL_SETS)}")
    pools = {}
    for folder in folders:
        loader, bound = REAL_SETS[folder.name]
        pools[folder.name] = (globals()[loader](folder), bound)
    return pools


def _load_genrm(folder: Path) -> list[np.ndarray]:
    data = np.load(folder / "gpqa_llama33_70b_genrm.npz", allow_pickle=False)
    return list(data["score_mean"])  # p(yes) averaged over 32 verifier calls, per solution


def _load_humaneval(folder: Path) -> list[np.ndarray]:
    data = np.load(folder / "humaneval_codegen16b_exec.npz", allow_pickle=False)
    return list(data["gen_tests_frac"])  # share of generated tests passed: ~9 distinct values


def _load_alpacaeval(folder: Path) -> list[np.ndarray]:
    by_prompt: dict[str, list[float]] = {}
    with (folder / "alpacaeval_tulu2dpo13b_gpt4turbo_pref.csv").open() as handle:
        for row in csv.DictReader(handle):
            by_prompt.setdefault(row["prompt_id"], []).append(float(row["judge_logit"]))
    return [np.array(v) for v in by_prompt.values()]


def _load_math500(folder: Path) -> list[np.ndarray]:
    data = json.loads((folder / "math500_llama32_1b_rlhflow_prm_scores.json").read_text())
    problems = data if isinstance(data, list) else data.get("problems", list(data.values()))
    return [np.array(p["last_step_score"], dtype=float) for p in problems]


# --- printing and plotting -------------------------------------------------------------------

def format_report(report: dict) -> str:
    """One block per source: per (m, n) the median and mean |error|/sd of the three models,
    the predictor's bias, its interval coverage, the share above the bound, and the share of
    missed truths whose sample was flagged heavy_tail."""
    lines = []
    for name, section in report.items():
        bound = section["upper_bound"]
        lines.append(f"{name}: {section['pools']} pools x {section['repeats']} samples"
                     + (f", rewards <= {bound}" if bound is not None else ""))
        lines.append(f"  {'m':>4} {'n':>5}  {'|err|/sd median: predicted':>26} {'tail fit':>8} {'plug-in':>8}"
                     f"   {'mean: predicted':>15} {'tail fit':>8} {'plug-in':>8} {'bias':>7} {'covered':>8} {'>bound':>7}"
                     f" {'heavy|missed':>12}")
        for c in section["cells"]:
            med = [c[k]["median_abs_error"] for k in MODELS]
            mean = [c[k]["mean_abs_error"] for k in MODELS]
            above = f"{c['above_bound']:.3f}" if "above_bound" in c else "-"
            heavy = "-" if c["heavy_tail_among_missed"] is None else f"{c['heavy_tail_among_missed']:.2f}"
            lines.append(f"  {c['m']:>4} {c['n']!s:>5}  {med[0]:>26.3f} {med[1]:>8.3f} {med[2]:>8.3f}   {mean[0]:>15.3f} "
                         f"{mean[1]:>8.3f} {mean[2]:>8.3f} {c['predicted']['bias']:>+7.3f} {c['interval_coverage']:>8.3f} {above:>7}"
                         f" {heavy:>12}")
    return "\n".join(lines)


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


def check_plot_target(target: str, option: str = "--plot") -> None:
    """Refuse, before any work, a plot path that cannot be written (``check_output_target``), a URL
    (plots are written locally), or a name whose extension matplotlib cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase

    from pipeline.outputs.destinations import check_output_target, local_path

    if local_path(target) is None:
        raise ConfigError(f"{option} {target!r} must be a local path (plots are not uploaded)")
    check_output_target(target, option)
    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(target).suffix.lstrip(".").lower() not in formats:
        raise ConfigError(f"{option} {target!r} must end in one of " + ", ".join(f".{name}" for name in sorted(formats)))


def _save(figure, path) -> None:
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)  # as --out does
    figure.savefig(path, dpi=110)
    plt.close(figure)
