"""summary.json numbers and the plot, from hand-made results (no engines)."""

import json
import math

import numpy as np
import pytest

from pipeline.jobs.report import summarise, summary_figure


def rows(method, budget, rewards, correct):
    return [{"prompt_id": f"p{i}", "method": method, "budget": budget, "best_reward": r, "correct": c,
             "pass_at_n": c, "majority_correct": c, "rollouts": budget, "tokens_generated": 10, "predicted_value": r + 1}
            for i, (r, c) in enumerate(zip(rewards, correct))]


def wilson(k, n, z=1.959963984540054):
    """The Wilson score interval, written out (Wilson 1927; Agresti & Coull 1998, eq. 2)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [centre - half, centre + half]


@pytest.mark.parametrize("correct", [[False] * 10, [True] * 10, [True] * 3 + [False] * 7])
def test_shares_have_wilson_intervals_with_width_at_zero_and_one(correct):
    summary = summarise(rows("bon", 8, np.arange(10.0), correct), ["bon"], [8])
    cell = summary["methods"]["bon"]["8"]
    expected = wilson(sum(correct), len(correct))
    for name in ("accuracy", "pass_at_n", "majority_vote"):
        assert cell[name] == pytest.approx(sum(correct) / 10)
        assert cell[f"{name}_ci95"] == pytest.approx(expected, abs=1e-12)
        assert cell[f"{name}_ci95"][1] - cell[f"{name}_ci95"][0] > 0.2  # 10 prompts: never a zero-width interval


def test_mean_best_reward_interval_is_over_prompts():
    rewards = np.array([1.0, 2.0, 4.0, 7.0])
    cell = summarise(rows("slg", 64, rewards, [True] * 4), ["slg"], [64])["methods"]["slg"]["64"]
    assert cell["mean_best_reward"] == pytest.approx(3.5)
    assert cell["ci95"] == pytest.approx(1.96 * rewards.std(ddof=1) / 2)


def test_plot_draws_each_methods_means_against_budget():
    results = rows("bon", 16, [1.0, 3.0], [True, False]) + rows("bon", 64, [2.0, 6.0], [True, True]) \
        + rows("slg", 16, [5.0, 5.0], [True, True]) + rows("slg", 64, [7.0, 9.0], [False, True])
    figure = summary_figure(summarise(results, ["bon", "slg"], [16, 64]))
    axes = figure.axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    lines.update({bars.get_label(): bars.lines[0] for bars in axes.containers})  # errorbar: the data line
    assert list(lines["bon (realised)"].get_xdata()) == [16, 64]
    assert list(lines["bon (realised)"].get_ydata()) == [2.0, 4.0]
    assert list(lines["slg (realised)"].get_ydata()) == [5.0, 8.0]
    assert list(lines["slg (predicted V_N of selected)"].get_ydata()) == [6.0, 9.0]


def test_a_prediction_some_searches_lack_is_counted_and_not_plotted():
    """slg_share's share-round searches report no predicted_value: the summary says how many did, and
    the plot draws the predicted line only where all did (a mean over some would not compare)."""
    results = rows("slg_share", 16, [1.0, 3.0], [True, True]) + rows("slg_share", 64, [2.0, 6.0], [True, True])
    results[0]["predicted_value"] = None
    summary = summarise(results, ["slg_share"], [16, 64])
    cells = summary["methods"]["slg_share"]
    assert (cells["16"]["predicted_value_prompts"], cells["16"]["prompts"]) == (1, 2)
    assert cells["16"]["predicted_value_mean"] == pytest.approx(4.0)  # the one that reported: 3 + 1
    assert cells["64"]["predicted_value_prompts"] == 2
    lines = {line.get_label(): line for line in summary_figure(summary).axes[0].get_lines()}
    assert list(lines["slg_share (predicted V_N of selected)"].get_xdata()) == [64]


def test_bench_repeats_report_each_figures_median_and_range():
    from pipeline.jobs.benchmark import format_runs, runs_summary

    parts = ("policy", "calls", "bookkeeping")
    runs = [{"rollouts_per_s": r, "tokens_per_s": 100 * r, "driver_us_per_rollout": d,
             **{f"driver_{part}_us_per_rollout": d / 3 for part in parts}}
            for r, d in ((900.0, 50.0), (800.0, 53.0), (1000.0, 48.0), (850.0, 61.0))]
    summary = runs_summary(runs)
    assert summary["driver_us_per_rollout"] == {"median": 51.5, "min": 48.0, "max": 61.0}  # of 48, 50, 53, 61
    assert summary["rollouts_per_s"] == {"median": 875.0, "min": 800.0, "max": 1000.0}
    assert summary["driver_policy_us_per_rollout"]["median"] == pytest.approx(51.5 / 3)
    lines = format_runs(summary, 4).splitlines()
    assert lines == ["over 4 runs, median (range): rollouts/s 875.0 (800.0-1000.0), generated tokens/s "
                     "87500.0 (80000.0-100000.0)",
                     "driver time per rollout 51.5 (48.0-61.0) us CPU: policy 17.2 (16.0-20.3), replica calls "
                     "17.2 (16.0-20.3), bookkeeping 17.2 (16.0-20.3)"]


def test_the_results_pages_cells_show_a_multipliers_range_only_where_it_says_something():
    from pipeline.jobs.results_book import _cell

    wide = {"mean_best_reward": -0.41287, "ci95": 0.0009, "compute_multiplier": 1.22, "compute_multiplier_range": [1.05, 1.41]}
    assert _cell(wide) == "-0.41287 +- 0.00090 (1.22x; 1.05x-1.41x)"
    flat = {**wide, "compute_multiplier": "saturated", "compute_multiplier_range": ["saturated", "saturated"]}
    assert _cell(flat) == "-0.41287 +- 0.00090 (saturated)"
    exact = {"mean_best_reward": -0.4123, "ci95": 0.0, "compute_multiplier": 1.3}  # a clairvoyant ceiling
    assert _cell(exact) == "-0.4123 (1.30x)"


def test_json_outputs_write_non_finite_numbers_as_null_and_keep_finite_ones_exactly():
    from pipeline.outputs.files import json_text

    value = {"a": [float("inf"), -float("inf"), float("nan"), 1.5, -0.0, 1e-320], "b": (np.float64(2.5), None)}
    assert json.loads(json_text(value)) == {"a": [None, None, None, 1.5, -0.0, 1e-320], "b": [2.5, None]}
