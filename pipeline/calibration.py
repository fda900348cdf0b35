"""How well the tail estimator predicts best-of-n: predictions from m samples against exact pool values.

Pure numpy. For each pool (a bank state's rewards, one prompt's responses in the real data of
``../shared/data/real``, or a state of a simulated world), m rewards are drawn from it, V_hat_n is
predicted from them, and compared with the exact E[max of n] (``pipeline.oracle`` for pools, the
world's own value for world states). The plug-in
estimate (the exact best-of-n of the m samples themselves) is reported beside it as the baseline a
prediction has to beat. ``slg curves`` prints this report.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from pipeline.oracle import expected_max_of_pool
from pipeline.tail import expected_max_std_normal, fit_tail_rows, prediction_stderr


class EmpiricalPool:
    """A finite pool of rewards: draws with replacement; the truth is the pool's exact E[max of n]."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=float)
        self.largest, self.spread = float(self.values.max()), float(self.values.std())

    def draw(self, rng, repeats: int, m: int) -> np.ndarray:
        return rng.choice(self.values, size=(repeats, m))

    def truth(self, n: int) -> float:
        return expected_max_of_pool(self.values, n)


class WorldState:
    """One state of a simulated world: exact V_n from the world, draws from its reward distribution."""

    def __init__(self, world, latent: float, rng):
        self.world, self.latent = world, float(latent)
        reference, _ = world.sample_rewards(rng, np.full(4000, self.latent))
        self.largest, self.spread = float(world.reward_bounds[1]), float(reference.std())

    def draw(self, rng, repeats: int, m: int) -> np.ndarray:
        return self.world.sample_rewards(rng, np.full((repeats, m), self.latent))[0]

    def truth(self, n: int) -> float:
        return float(self.world.state_value(np.array([self.latent]), n)[0])


def world_states(world, num_states: int, seed: int = 0) -> list[WorldState]:
    rng = np.random.default_rng([seed, 1])
    return [WorldState(world, latent, rng) for latent in world.sample_states(rng, (num_states,))]


def calibrate(pools: list, m_values: list[int], n_values: list[int], repeats: int, seed: int = 0,
              tail_fraction: float = 0.2, upper_bound: float | None = None) -> dict:
    """Error summaries per (m, n) over all pools and repeats; see the module docstring.

    ``pools``: reward lists (exact pools) or objects with ``draw``, ``truth``, ``largest`` and
    ``spread`` (``WorldState``). Per cell: ``median_abs_error``, ``mean_abs_error`` and ``bias`` of
    the prediction, the same errors of the plug-in estimate (``*_plugin``; saturated rewards make
    medians 0, hence means), ``median_scaled_error`` (|error| over the pool's standard deviation,
    comparable across reward scales), ``interval_coverage`` (how often the truth lies within
    V_hat +- 1.96 se, se from ``prediction_stderr``, over non-degenerate fits), ``above_pool_max``
    (share of predictions above the largest reward the pool can give) and, with ``upper_bound``,
    ``above_bound`` (share of unclipped predictions above it; reported predictions are clipped).
    """
    if repeats < 1 or not m_values or not n_values or min(m_values) < 1 or min(n_values) < 1:
        raise ValueError("calibrate needs repeats >= 1 and non-empty lists of m >= 1 and n >= 1")
    pools = [p if hasattr(p, "draw") else EmpiricalPool(p) for p in pools if not hasattr(p, "__len__") or len(p) > 0]
    if not pools:
        raise ValueError("no non-empty pools to calibrate on")
    rng = np.random.default_rng(seed)
    report = {"pools": len(pools), "tail_fraction": tail_fraction, "upper_bound": upper_bound, "cells": []}
    for m in m_values:
        draws = [pool.draw(rng, repeats, m) for pool in pools]
        fits = [fit_tail_rows(d, tail_fraction) for d in draws]
        ordered = [np.sort(d, axis=1) for d in draws]
        for n in n_values:
            e = expected_max_std_normal(n)
            plugin_weights = _plugin_weights(m, n)
            errors, plugin_errors, scaled, above_max, above_bound, covered = [], [], [], [], [], []
            for pool, (mu, sigma, n_tail, _), rows in zip(pools, fits, ordered):
                truth = pool.truth(n)
                raw = mu + sigma * e
                predicted = raw if upper_bound is None else np.minimum(raw, upper_bound)
                errors.append(predicted - truth)
                plugin_errors.append(rows @ plugin_weights - truth)
                scaled.append(np.abs(predicted - truth) / pool.spread if pool.spread > 0 else np.zeros(repeats))
                above_max.append(predicted > pool.largest + 1e-12)
                se = prediction_stderr(sigma, n_tail, e, tail_fraction)
                covered.append((np.abs(raw - truth) <= 1.96 * se)[sigma > 0])
                if upper_bound is not None:
                    above_bound.append(raw > upper_bound)
            errors, plugin_errors, covered = np.concatenate(errors), np.concatenate(plugin_errors), np.concatenate(covered)
            cell = {"m": m, "n": n,
                    "median_abs_error": float(np.median(np.abs(errors))),
                    "mean_abs_error": float(np.abs(errors).mean()),
                    "mean_abs_error_plugin": float(np.abs(plugin_errors).mean()),
                    "bias": float(errors.mean()),
                    "median_abs_error_plugin": float(np.median(np.abs(plugin_errors))),
                    "median_scaled_error": float(np.median(np.concatenate(scaled))),
                    "interval_coverage": float(covered.mean()) if covered.size else None,
                    "above_pool_max": float(np.concatenate(above_max).mean())}
            if upper_bound is not None:
                cell["above_bound"] = float(np.concatenate(above_bound).mean())
            report["cells"].append(cell)
    return report


def _plugin_weights(m: int, n: int) -> np.ndarray:
    """w with sorted_sample @ w = exact E[max of n draws from the m-sample] (with replacement)."""
    cdf = (np.arange(m + 1) / m) ** n
    return np.diff(cdf)


# --- the real data of ../shared/data/real -------------------------------------------------------

REAL_SETS = {
    # folder: (loader, the largest reward the scorer can give or None)
    "genrm_gpqa_llama33_70b": ("_load_genrm", 1.0),
    "humaneval_codet_codegen16b": ("_load_humaneval", 1.0),
    "alpacaeval_bon16_tulu2_gpt4judge": ("_load_alpacaeval", None),
    "math500_bon256_llama32_1b_rlhflow_prm": ("_load_math500", 1.0),
}


def real_pools(path) -> dict[str, tuple[list[np.ndarray], float | None]]:
    """Prompt-level reward pools of the real data sets under ``path`` (the folder, or one set)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"real data folder {str(path)!r} does not exist")
    folders = [path] if path.name in REAL_SETS else [path / name for name in REAL_SETS if (path / name).is_dir()]
    if not folders:
        raise ValueError(f"no known real data set under {str(path)!r}; expected one of {sorted(REAL_SETS)}")
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


def format_report(report: dict) -> str:
    lines = []
    for name, section in report.items():
        bound = section["upper_bound"]
        lines.append(f"{name}: {section['pools']} pools, q = {section['tail_fraction']}"
                     + (f", predictions clipped at {bound}" if bound is not None else ""))
        lines.append(f"  {'m':>4} {'n':>5} {'mean |err| pred':>16} {'plug-in':>8} {'median':>7} {'plug-in':>8} {'bias':>8} "
                     f"{'|err|/sd':>9} {'covered':>8} {'>pool max':>10} {'>bound':>7}")
        for c in section["cells"]:
            above_bound = f"{c['above_bound']:.3f}" if "above_bound" in c else "-"
            coverage = "-" if c.get("interval_coverage") is None else f"{c['interval_coverage']:.3f}"
            lines.append(f"  {c['m']:>4} {c['n']:>5} {c['mean_abs_error']:>16.4f} {c['mean_abs_error_plugin']:>8.4f} "
                         f"{c['median_abs_error']:>7.4f} {c['median_abs_error_plugin']:>8.4f} "
                         f"{c['bias']:>+8.4f} {c['median_scaled_error']:>9.3f} {coverage:>8} {c['above_pool_max']:>10.3f} {above_bound:>7}")
    return "\n".join(lines)


def plot_report(report: dict, path) -> None:
    """Scaled error (|error| / sd, median) against n: one panel per source, a line per m; the
    plug-in estimate dashed. Below the dashed line, extrapolation beats the sample itself."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report)
    columns = min(3, len(names))
    rows = (len(names) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False)
    for panel, name in zip(axes.ravel(), names):
        cells = report[name]["cells"]
        for index, m in enumerate(sorted({c["m"] for c in cells})):
            mine = [c for c in cells if c["m"] == m]
            ns = [c["n"] for c in mine]
            panel.plot(ns, [c["mean_abs_error"] for c in mine], marker="o", color=f"C{index}", label=f"m={m} predicted")
            panel.plot(ns, [c["mean_abs_error_plugin"] for c in mine], linestyle="--", color=f"C{index}",
                       label=f"m={m} plug-in")
        panel.set_xscale("log")
        panel.set_title(name, fontsize=9)
        panel.set_xlabel("n")
        panel.set_ylabel("mean |V_hat_n - V_n|")
        panel.grid(True, alpha=0.3)
    for panel in axes.ravel()[len(names):]:
        panel.axis("off")
    axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
