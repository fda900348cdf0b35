"""Summaries of a run's results: the summary.json numbers, the printed table, the plot.

Pure functions of the list of per-(prompt, method, budget) results. The mean best reward has a 95%
normal interval over prompts (``ci95``, a half-width); shares of prompts (accuracy, pass@N,
majority vote) have 95% Wilson score intervals (``*_ci95``, [low, high]), which stay honest at
0 and 1, where a normal interval would have no width. Every method run beside ``bon`` also gets
its paired difference from it (``vs_bon``): the mean over prompts of (method - bon) in best reward
and in accuracy, with 95% normal intervals. Methods share each prompt's root rollouts, and
prompts differ far more than methods do, so the paired interval is the sharp one.

Cost: rollouts, generated tokens and reward-model tokens per search (means), and, where ``bon`` ran,
a compute multiplier in rollouts and in generated tokens (``compute_multiplier``): best-of-N's
rollouts (tokens) to reach the method's mean best reward over the method's own. Best-of-N's curve
is known here only at the budgets it ran: between two of them it is interpolated linearly in log N
(its running maximum, so noise cannot make it fall), and beyond them the multiplier is a bound
(``"<x"``: best-of-N's smallest budget already reaches it; ``">x"``: its largest does not).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from pipeline.offline.multipliers import format_multiplier
from pipeline.stats.prefix_signal import PrefixSignal


def summarise(results: list[dict], methods: list[str], budgets: list[int]) -> dict:
    """``{"methods": {METHOD: {BUDGET: {...}}}}`` as docs/formats.md describes (BUDGET as a string)."""
    results = sorted(results, key=lambda r: str(r["prompt_id"]))  # sums in a fixed order: same bits every run
    table: dict = {"methods": {}}
    reference = bon_reference(results, budgets) if "bon" in methods else None
    for method in methods:
        per_budget = {}
        for budget in budgets:
            rows = [r for r in results if r["method"] == method and r["budget"] == budget]
            rewards = np.array([r["best_reward"] for r in rows if r["best_reward"] is not None], dtype=float)
            correct = [r["correct"] for r in rows if r.get("correct") is not None]
            passed = [r["pass_at_n"] for r in rows if r.get("pass_at_n") is not None]
            majority = [r["majority_correct"] for r in rows if r.get("majority_correct") is not None]
            predicted = [r["predicted_value"] for r in rows if r.get("predicted_value") is not None]
            per_budget[str(budget)] = {
                "mean_best_reward": float(rewards.mean()) if rewards.size else None,
                "ci95": float(1.96 * rewards.std(ddof=1) / math.sqrt(rewards.size)) if rewards.size > 1 else None,
                "accuracy": _share(correct), "accuracy_ci95": _share_ci95(correct),
                "pass_at_n": _share(passed), "pass_at_n_ci95": _share_ci95(passed),
                "majority_vote": _share(majority), "majority_vote_ci95": _share_ci95(majority),
                "rollouts_mean": float(np.mean([r["rollouts"] for r in rows])) if rows else None,
                "tokens_generated_mean": float(np.mean([r["tokens_generated"] for r in rows])) if rows else None,
                "rm_tokens_mean": float(np.mean([r.get("rm_tokens", 0) for r in rows])) if rows else None,
                "predicted_value_mean": float(np.mean(predicted)) if predicted else None,
                "predicted_value_prompts": len(predicted),  # slg_share's share-round searches report none
                "prefix_correlation": _prefix_signal([r.get("prefix_correlation") for r in rows]),
                "prompts": len(rows),
            }
            if method != "bon" and "bon" in methods:
                per_budget[str(budget)]["vs_bon"] = paired_difference(results, method, "bon", budget)
            if reference and rewards.size:
                cell = per_budget[str(budget)]
                cell["compute_multiplier"] = compute_multipliers(reference, cell["mean_best_reward"], cell["rollouts_mean"],
                                                                 cell["tokens_generated_mean"])
        table["methods"][method] = per_budget
    return table


def paired_difference(results: list[dict], method: str, baseline: str, budget: int,
                      baseline_budget: int | None = None) -> dict | None:
    """Mean over prompts of (method - baseline) in best reward and in accuracy (where graded), each
    with its 95% normal half-width, over the prompts both finished; None when none did. The
    baseline at ``baseline_budget`` (default: the same budget): e.g. best-of-N at the budget whose
    generated tokens match the method's (equal cost)."""
    baseline_budget = budget if baseline_budget is None else baseline_budget
    mine = {r["prompt_id"]: r for r in results if r["method"] == method and r["budget"] == budget}
    theirs = {r["prompt_id"]: r for r in results if r["method"] == baseline and r["budget"] == baseline_budget}
    pairs = [(mine[p], theirs[p]) for p in mine if p in theirs]
    out = {"prompts": len(pairs)}
    for name, field in (("best_reward", "best_reward"), ("accuracy", "correct")):
        diffs = np.array([float(a[field]) - float(b[field]) for a, b in pairs
                          if a.get(field) is not None and b.get(field) is not None])
        out[name] = float(diffs.mean()) if diffs.size else None
        out[f"{name}_ci95"] = float(1.96 * diffs.std(ddof=1) / math.sqrt(diffs.size)) if diffs.size > 1 else None
    return out if pairs else None


def bon_reference(results: list[dict], budgets: list[int]) -> dict | None:
    """Best-of-N's measured curve: its budgets, mean best rewards (running maximum) and generated
    tokens per rollout over all its searches; None where it finished none."""
    rows = [r for r in results if r["method"] == "bon" and r["best_reward"] is not None]
    points = [(b, float(np.mean([r["best_reward"] for r in rows if r["budget"] == b])))
              for b in sorted(budgets) if any(r["budget"] == b for r in rows)]
    if not points:
        return None
    rollouts = sum(r["rollouts"] for r in rows)
    return {"budgets": np.array([b for b, _ in points], float),
            "rewards": np.maximum.accumulate([reward for _, reward in points]),
            "tokens_per_rollout": sum(r["tokens_generated"] for r in rows) / rollouts if rollouts else None}


def compute_multipliers(reference: dict, reward: float, rollouts: float, tokens: float) -> dict:
    """Best-of-N's rollouts and generated tokens to reach ``reward``, over ``rollouts`` and ``tokens``:
    numbers where best-of-N's measured budgets bracket it (linear in log N between them), bounds
    (strings) beyond them."""
    budgets, rewards = reference["budgets"], reference["rewards"]
    per_rollout = reference["tokens_per_rollout"]

    def ratios(needed: float, sign: str = "") -> dict:
        out = {"rollouts": needed / rollouts if rollouts else None,
               "tokens": needed * per_rollout / tokens if per_rollout and tokens else None}
        return {k: v if v is None or not sign else f"{sign}{v:.3g}" for k, v in out.items()}

    if reward <= rewards[0]:
        return ratios(budgets[0], "<" if reward < rewards[0] else "")
    if reward > rewards[-1]:
        return ratios(budgets[-1], ">")
    i = int(np.searchsorted(rewards, reward))  # rewards[i - 1] < reward <= rewards[i]
    share = (reward - rewards[i - 1]) / (rewards[i] - rewards[i - 1])
    return ratios(float(np.exp(np.log(budgets[i - 1]) + share * np.log(budgets[i] / budgets[i - 1]))))


def _prefix_signal(values: list) -> dict | None:
    """Over the searches' ``prefix_correlation``: ``{"mean", "ci95", "prompts", "says_nothing"}``
    (``PrefixSignal``), or None where fewer than two searches report one."""
    signal = PrefixSignal.of([math.nan if v is None else v for v in values])
    return None if signal is None else signal.as_dict()


def prefix_warnings(summary: dict) -> list[str]:
    """One line per (method, N) of ``summary`` whose searches' prefix scores clearly do not track
    their rewards (``PrefixSignal.says_nothing``): ``slg_share`` picks its state by them."""
    lines = []
    for method, per_budget in summary["methods"].items():
        for budget, cell in per_budget.items():
            signal = cell.get("prefix_correlation")
            if signal and signal["says_nothing"]:
                lines.append(PrefixSignal(signal["mean"], signal["ci95"], signal["prompts"]).warning(f"{method} at N = {budget}"))
    return lines


def _share(flags: list) -> float | None:
    return float(np.mean(flags)) if flags else None


def _share_ci95(flags: list) -> list[float] | None:
    """The 95% Wilson score interval [low, high] of a share of prompts."""
    if not flags:
        return None
    interval = stats.binomtest(int(sum(flags)), len(flags)).proportion_ci(0.95, method="wilson")
    return [float(interval.low), float(interval.high)]


def format_summary(summary: dict) -> str:
    header = (f"{'method':<15}{'N':>6}  {'mean best reward':>20}  {'vs bon (paired)':>20}  {'accuracy':>8}  {'pass@N':>7}  "
              f"{'majority':>8}  {'rollouts':>8}  {'tokens':>8}  {'x tokens':>8}  {'prompts':>7}")
    lines = [header, "-" * len(header)]
    for method, per_budget in summary["methods"].items():
        for budget, s in per_budget.items():
            reward = "-" if s["mean_best_reward"] is None else f"{s['mean_best_reward']:.4f}"
            if s["ci95"] is not None:
                reward += f" +- {s['ci95']:.4f}"
            accuracy = "-" if s["accuracy"] is None else f"{s['accuracy']:.3f}"
            passed = "-" if s["pass_at_n"] is None else f"{s['pass_at_n']:.3f}"
            majority = "-" if s["majority_vote"] is None else f"{s['majority_vote']:.3f}"
            rollouts = "-" if s["rollouts_mean"] is None else f"{s['rollouts_mean']:.1f}"
            paired = s.get("vs_bon")
            versus = "-" if not paired or paired["best_reward"] is None else f"{paired['best_reward']:+.4f}"
            if paired and paired["best_reward_ci95"] is not None:
                versus += f" +- {paired['best_reward_ci95']:.4f}"
            tokens = "-" if s["tokens_generated_mean"] is None else f"{s['tokens_generated_mean']:.0f}"
            times = (s.get("compute_multiplier") or {}).get("tokens")
            times = format_multiplier(times)
            lines.append(f"{method:<15}{budget:>6}  {reward:>20}  {versus:>20}  {accuracy:>8}  {passed:>7}  {majority:>8}  "
                         f"{rollouts:>8}  {tokens:>8}  {times:>8}  {s['prompts']:>7}")
    return "\n".join(lines)


def plot_summary(summary: dict, path) -> None:
    """Write :func:`summary_figure` to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    figure = summary_figure(summary)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def summary_figure(summary: dict):
    """Best reward against budget per method, with the mean predicted V_N of the selected states
    (dashed) beside the realised best reward for the methods that predict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, (method, per_budget) in enumerate(summary["methods"].items()):
        budgets = [int(b) for b, s in per_budget.items() if s["mean_best_reward"] is not None]
        if not budgets:
            continue
        means = [per_budget[str(b)]["mean_best_reward"] for b in budgets]
        errors = [per_budget[str(b)]["ci95"] or 0.0 for b in budgets]
        colour = f"C{index}"
        axes.errorbar(budgets, means, yerr=errors, marker="o", capsize=3, color=colour, label=f"{method} (realised)")
        # only where every search of the cell reported a prediction: a mean over some of them would
        # not compare with the realised mean over all
        predicted = [(b, per_budget[str(b)]["predicted_value_mean"]) for b in budgets
                     if per_budget[str(b)]["predicted_value_mean"] is not None
                     and per_budget[str(b)]["predicted_value_prompts"] == per_budget[str(b)]["prompts"]]
        if predicted and method != "oracle":
            axes.plot(*zip(*predicted), linestyle="--", marker="x", color=colour, label=f"{method} (predicted V_N of selected)")
    axes.set_xscale("log")
    all_budgets = sorted({int(b) for per_budget in summary["methods"].values() for b in per_budget})
    axes.set_xticks(all_budgets, [str(b) for b in all_budgets])
    axes.minorticks_off()
    axes.set_xlabel("budget N (rollouts per prompt)")
    axes.set_ylabel("mean best reward")
    axes.set_title("Best reward vs budget")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
