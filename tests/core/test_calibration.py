"""``slg curves`` and ``slg predict``: the predictor against exact pool values (real data in the
repository, simulated worlds), the commands' outputs and plots, and every bad input of predict."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.offline.calibration import MODELS, calibrate, world_states
from pipeline.offline.plots import prediction_figure, report_figure
from pipeline.offline.real_data import REAL_DATA, real_pools
from pipeline.offline.worlds import make_world
from pipeline.stats.predict import predict_rows


def test_real_data_ships_with_the_repository():
    pools = real_pools()
    assert REAL_DATA.is_dir() and set(pools) == {"genrm_gpqa_llama33_70b", "humaneval_codet_codegen16b",
                                                 "alpacaeval_bon16_tulu2_gpt4judge", "math500_bon256_llama32_1b_rlhflow_prm"}
    sizes = {name: (len(values), len(values[0])) for name, (values, _) in pools.items()}
    assert sizes == {"genrm_gpqa_llama33_70b": (64, 64), "humaneval_codet_codegen16b": (164, 100),
                     "alpacaeval_bon16_tulu2_gpt4judge": (805, 11), "math500_bon256_llama32_1b_rlhflow_prm": (3, 256)}
    used_field = {"genrm_gpqa_llama33_70b": "score_mean", "humaneval_codet_codegen16b": "gen_tests_frac",
                  "alpacaeval_bon16_tulu2_gpt4judge": "judge_logit", "math500_bon256_llama32_1b_rlhflow_prm": "last_step_score"}
    for name, field in used_field.items():
        readme = (REAL_DATA / name / "README.txt").read_text()  # source, licence, and the field slg reads
        assert "Source" in readme and "license" in readme and field in readme, name


@pytest.mark.parametrize("name", ["genrm_gpqa_llama33_70b", "humaneval_codet_codegen16b",
                                  "alpacaeval_bon16_tulu2_gpt4judge", "math500_bon256_llama32_1b_rlhflow_prm"])
def test_snapshot_on_the_real_rewards_the_constants_were_chosen_on_the_predictor_is_never_worse(name):
    """A snapshot, not an independent check: ALPHA_CONTINUOUS and RICHNESS_PRIOR were chosen on these
    very data (docs/prediction.md); the held-out check is the next test.
    The protocol: 20 samples of m per prompt, truth = exact E[max of n] of the prompt's pool at n =
    pool size, |error| in units of the pool's sd, seed 0. Tolerance 0.01 sd; MATH-500 has one
    informative prompt, so its cells are the noisiest."""
    values, bound = real_pools()[name]
    report = calibrate(values, [8, 16, 32], "pool", repeats=20, seed=0, upper_bound=bound)
    for cell in report["cells"]:
        for statistic in ("median_abs_error", "mean_abs_error"):
            best_other = min(cell["tail_fit"][statistic], cell["plug_in"][statistic])
            assert cell["predicted"][statistic] <= best_other + 0.01, (name, cell["m"], statistic)
        if bound is not None:
            assert cell["above_bound"] == 0.0


@pytest.mark.parametrize("bank", [
    "toy_t16",
    pytest.param("toy_t8", marks=pytest.mark.xfail(strict=True, reason=(
        "held out, and it fails: the states' pools at T = 8 (median 1,280 rewards, 179 distinct values) "
        "look continuous to the constants chosen on data/real (continuity 0.5-0.9 from 32 samples), so the "
        "predictor extends a tail past the pools' top level; mean |error| 0.16 sd at m = 32 against the "
        "plug-in's 0.07 (docs/prediction.md)"))),
])
def test_on_held_out_real_rewards_the_predictor_is_never_worse_than_tail_fit_or_plug_in(bank):
    """The same protocol on real rewards no constant was chosen on: every state pool of the toy models'
    banks (the generator's own outputs, scored by its reward model), 10 samples of m per pool."""
    from pipeline.offline.bank import read_bank

    pools = [s for p in read_bank(Path(__file__).resolve().parents[2] / "data" / "banks" / f"{bank}.parquet")
             for s in p.state_rewards]
    report = calibrate(pools, [8, 16, 32], "pool", repeats=10, seed=0)
    for cell in report["cells"]:
        for statistic in ("median_abs_error", "mean_abs_error"):
            best_other = min(cell["tail_fit"][statistic], cell["plug_in"][statistic])
            assert cell["predicted"][statistic] <= best_other + 0.01, (bank, cell["m"], statistic)


def test_calibration_on_gaussian_pools_reports_all_three_models():
    rng = np.random.default_rng(0)
    report = calibrate([rng.normal(size=5000) for _ in range(20)], [64], [1000], repeats=50)
    (cell,) = report["cells"]
    assert set(MODELS) <= set(cell) and cell["cases"] == 1000
    assert cell["predicted"]["mean_abs_error"] < 0.6 * cell["plug_in"]["mean_abs_error"]  # extrapolation beats the sample
    assert 0.9 <= cell["interval_coverage"] <= 1.0  # a finite pool's V_1000 sits a little below the normal's


def test_world_curves_match_the_reference_small_sample_behaviour():
    report = calibrate(world_states(make_world("gaussian"), 60, seed=0), [64], [1000], repeats=60, seed=1)
    (cell,) = report["cells"]
    # the published finite-budget table (docs/method.md): at m = 65, n = 1000 the tail fit averages 3.05 against 3.09 (bias -0.04, sd
    # 0.55, quantile rule); 3600 cases give the bias to +-0.02, the rule and m differ slightly.
    assert cell["tail_fit"]["bias"] == pytest.approx(-0.05, abs=0.1)
    assert cell["predicted"]["mean_abs_error"] < 0.6 * cell["plug_in"]["mean_abs_error"]
    assert cell["interval_coverage"] == pytest.approx(0.95, abs=0.02)  # binomial sd 0.004 over 3600 cases


def test_report_plot_draws_the_reported_errors(tmp_path):
    report = {"w": calibrate(world_states(make_world("bounded"), 8, seed=0), [16, 32], [100, 1000], repeats=4, seed=0,
                             upper_bound=1.0)}
    figure = report_figure(report)
    lines = figure.axes[0].get_lines()
    assert len(lines) == 6  # 2 m x 3 models
    for index, m in enumerate((16, 32)):
        cells = [c for c in report["w"]["cells"] if c["m"] == m]
        for offset, model in enumerate(MODELS):
            line = lines[3 * index + offset]
            assert list(line.get_xdata()) == [100, 1000]
            assert np.allclose(line.get_ydata(), [c[model]["mean_abs_error"] for c in cells])


def _pixels(path):
    import matplotlib.image

    image = matplotlib.image.imread(str(path))[:, :, :3]
    return image.reshape(-1, 3)


def _has_colour(pixels, rgb, tolerance=0.08):
    return int((np.abs(pixels - np.asarray(rgb)).max(axis=1) < tolerance).sum())


def test_cli_curves_on_every_world_writes_json_and_a_plot_of_it(tmp_path):
    out, plot = tmp_path / "curves.json", tmp_path / "curves.png"
    assert main(["curves", "--world", "all", "--states", "5", "--repeats", "5", "--m", "16", "--n", "100",
                 "--out", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    assert len(report) == 5 and all(len(section["cells"]) == 1 for section in report.values())
    pixels = _pixels(plot)
    assert len(np.unique(pixels.round(2), axis=0)) > 50  # not a blank canvas
    assert _has_colour(pixels, (0.12, 0.47, 0.71)) > 100  # C0, the colour of the m = 16 lines


def test_cli_curves_reads_the_real_data_by_default(capsys):
    assert main(["curves", "--real", "--m", "8", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "humaneval_codet_codegen16b: 146 pools x 2 samples, rewards <= 1.0" in out and "  pool " in out


def test_cli_curves_beyond_free_memory_is_refused_in_one_line_before_a_state_is_drawn(tmp_path, capsys, monkeypatch):
    import psutil

    from pipeline.offline import calibration

    def need(pools, repeats, m, num_n, world_states=0):  # the check's own model of the peak (its measured constants)
        return (pools * repeats * (calibration.SAMPLE_VALUE_BYTES * m + calibration.SAMPLE_N_BYTES * num_n + calibration.SAMPLE_BYTES)
                + calibration.WORLD_STATE_BYTES * world_states)

    drawn = []
    monkeypatch.setattr(calibration, "world_states", lambda *a: drawn.append(a) or [])
    world = ["curves", "--world", "gaussian", "--states", "30", "--repeats", "4", "--m", "8,16", "--n", "100,1000"]
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": need(30, 4, 16, 2, 30) - 1}))
    assert main(world) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--states 30 x --repeats 4 samples of up to m = 16 rewards, predicted at 2 n" in err
    assert drawn == []  # refused before the world's states were drawn
    bank = tmp_path / "b.jsonl"  # a bank: 3 pools, each state's rewards
    bank.write_text(json.dumps({"prompt_id": "p", "states": [[0.1, 0.5, 0.9], [0.2, 0.3], [1.0, 2.0]]}) + "\n")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": need(3, 10, 8, 1) - 1}))
    assert main(["curves", "--bank", str(bank), "--repeats", "10", "--m", "8"]) == 2
    assert "bank: 3 pools x --repeats 10 samples of up to m = 8 rewards, predicted at 1 n" in capsys.readouterr().err
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": need(3, 10, 8, 1)}))
    assert main(["curves", "--bank", str(bank), "--repeats", "10", "--m", "8"]) == 0


def write_lines(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def test_cli_predict_writes_one_line_per_id_and_n(tmp_path, capsys):
    rng = np.random.default_rng(1)
    rows = [{"id": f"q{i}", "rewards": list(1 / (1 + np.exp(-rng.normal(1, 1, 20 + i))))} for i in range(3)]
    source, out = write_lines(tmp_path / "r.jsonl", rows), tmp_path / "p.jsonl"
    assert main(["predict", "--rewards", source, "--n", "100,1000,10000", "--upper-bound", "1", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["id"], line["n"]) for line in lines] == [(f"q{i}", n) for i in range(3) for n in (100, 1000, 10000)]
    table = np.full((3, 22), np.nan)
    for i, row in enumerate(rows):
        table[i, : len(row["rewards"])] = row["rewards"]
    expected = predict_rows(table, [100, 1000, 10000], 1.0, groups=np.zeros(3))
    for k, line in enumerate(lines):
        assert set(line) >= {"id", "n", "predicted", "lower", "upper", "model", "flags"}
        assert line["predicted"] == pytest.approx(expected.value[k // 3, k % 3], rel=1e-12)
        assert line["lower"] <= line["predicted"] <= line["upper"] <= 1.0
    printed = capsys.readouterr().out
    assert "q2" in printed and "10000" in printed and "95% interval" in printed


def test_the_predict_example_of_prediction_md_prints_what_the_page_shows(capsys):
    """docs/prediction.md's first command and the lines it shows (its '...' lines left out)."""
    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "prediction.md").read_text()
    shown = page.split("It prints:", 1)[1].split("```", 2)[1].strip().splitlines()
    assert main(["predict", "--rewards", str(root / "data/real/examples/math500_first16.jsonl"), "--n", "16,64,256,1024",
                 "--upper-bound", "1"]) == 0
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    expected = [line.split() for line in shown if line.strip() != "..."]
    assert len(expected) == 8 and all(line in printed for line in expected)


def test_cli_predict_reads_a_reward_bank_and_plots_the_curves(tmp_path):
    bank = write_lines(tmp_path / "bank.jsonl", [{"prompt_id": "p0", "states": [[0.1, 0.5, 0.3, 0.9], [0.2, 0.4, 0.6]]},
                                                 {"prompt_id": "p1", "states": [[1.0, 2.0, 3.0]]}])
    out, plot = tmp_path / "p.jsonl", tmp_path / "p.png"
    assert main(["predict", "--rewards", bank, "--n", "10,100", "--out", str(out), "--plot", str(plot)]) == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == ["p0/s0", "p0/s0", "p0/s1", "p0/s1", "p1/s0", "p1/s0"]
    pixels = _pixels(plot)
    assert _has_colour(pixels, (0.12, 0.47, 0.71)) > 100 and _has_colour(pixels, (1.0, 0.5, 0.05)) > 100  # C0, C1 curves


def test_plotted_curves_pass_through_the_files_own_predictions():
    """The plot shows the first rows only, with the whole file's pooled statistics: at each
    requested n its curve and band are the predictions written for that id. The rows shown have
    untied maxima, the others tied ones, so the interval's share of tied tops differs if the plot
    pooled its own rows."""
    from pipeline.offline.predictions import predict_file, predicted_curves

    rng = np.random.default_rng(4)
    untied = [rng.normal(size=12).tolist() for _ in range(2)]
    tied = [np.append(values, values.max()).tolist() for values in rng.normal(size=(6, 12))]
    n = [10, 1000]
    lines, result, table = predict_file([f"r{k}" for k in range(8)], untied + tied, n)
    grid, curves = predicted_curves(table, result, n, None, shown=2)
    for line in lines[:4]:
        row, column = int(line["id"][1:]), int(np.flatnonzero(grid == line["n"])[0])
        got = (curves.value[row, column], curves.lower[row, column], curves.upper[row, column])
        assert got == pytest.approx((line["predicted"], line["lower"], line["upper"]), abs=1e-12)


def test_prediction_plot_draws_the_predicted_curves_and_bands():
    grid = np.array([1, 10, 100, 1000])
    value = np.array([[0.1, 0.5, 0.8, 0.9], [0.2, 0.3, 0.4, 0.5]])
    lower, upper = value - 0.05, value + 0.1
    figure = prediction_figure(["a", "b"], grid, value, lower, upper, marked_n=[100])
    axis = figure.axes[0]
    curves = [line for line in axis.get_lines() if line.get_linestyle() == "-"]
    assert [list(line.get_ydata()) for line in curves] == value.tolist()
    for band, low, high in zip(axis.collections, lower, upper):
        vertices = band.get_paths()[0].vertices
        assert np.isclose(vertices[:, 1].min(), low.min()) and np.isclose(vertices[:, 1].max(), high.max())
    markers = [line for line in axis.get_lines() if line.get_marker() == "o"]
    assert [list(line.get_xdata()) for line in markers] == [[100], [100]]


@pytest.mark.parametrize("content, argv, match", [
    ('{"id": "a", "rewards": [1.0, NaN]}', [], "reward 1 of id 'a' is nan, not a finite number"),
    ('{"id": "a", "rewards": [1.0, Infinity]}', [], "not a finite number"),
    ('{"id": "a", "rewards": [1.0, "x"]}', [], "not a finite number"),
    ('{"id": "a", "rewards": [true]}', [], "not a finite number"),
    ('{"id": "a", "rewards": [1' + "0" * 400 + ']}', [], "reward 0 of id 'a' is 1000"),  # beyond a float's range
    # finite, but squared and summed beyond a float: refused as it is read, not after the work
    ('{"id": "a", "rewards": [1e300, 0.5]}', [], "reward 0 of id 'a' is 1e+300, not a finite number within +-1e+100"),
    ('{"id": "\\ud800", "rewards": [0.5]}', [], "is not text that UTF-8 can hold"),  # the writers would fail
    ('{"prompt_id": null, "states": [[0.5]]}', [], "'prompt_id' must be a string"),  # not the prompt "None"
    ('{"id": "a", "rewards": []}', [], "non-empty list"),
    ('{"id": "a", "rewards": 3}', [], "non-empty list"),
    ('{"id": "a"}', [], "expected"),
    ('{"prompt_id": "p", "states": []}', [], "'states' is empty"),
    ('{"prompt_id": "p", "states": [[0.5], []]}', [], "id 'p/s1' must be a non-empty list"),
    ('{"id": "a", "rewards": [1]}\n{"id": "a", "rewards": [2]}', [], "line 2: duplicate id 'a'"),
    ('{"id": "a", "rewards": [1]}\nnot json', [], "line 2: not valid JSON"),
    ('', [], ".jsonl' holds no reward lists"),  # the path as the user wrote it, not a PosixPath repr
    ('{"id": "a", "rewards": [0.5, 1.5]}', ["--upper-bound", "1"], "--upper-bound 1 is below a reward of id 'a' (1.5)"),
    ('{"id": "a", "rewards": [0.5]}', ["--upper-bound", "nan"], "--upper-bound must be a finite number"),
    # as a reward is: the tail integrals overflowed on (bound - top) x scale
    ('{"id": "a", "rewards": [0.5]}', ["--upper-bound", "1.7e308"],
     "--upper-bound must be a finite number within +-1e+100, got 1.7e+308"),
    ('{"id": "a", "rewards": [0.5, 1' + "0" * 400 + ']}', [],  # the value cut, not its 401 digits
     "reward 1 of id 'a' is 1" + "0" * 29 + "... (401 characters), not a finite number within"),
    ('{"id": "a", "rewards": [0.5]}', ["--n", "0"], "argument --n: expected integers >= 1, got 0 in '0'"),
    ('{"id": "a", "rewards": [0.5]}', ["--n", "ten"], "expected comma-separated integers"),
    ('{"id": "a", "rewards": [0.5]}', ["--n", ","], "argument --n: expected at least one integer, got ','"),
    ('{"id": "a", "rewards": [0.5]}', ["--n", "10,100,10"], "argument --n: 10 is listed twice in '10,100,10'"),
])
def test_cli_predict_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, content, argv, match):
    source = tmp_path / "r.jsonl"
    source.write_text(content)
    args = ["predict", "--rewards", str(source), "--n", "100"]
    if "--n" in argv:
        args = args[:-2]
    assert main(args + argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("where", ["missing", "folder"])
def test_cli_predict_unreadable_file_is_exit_code_2(tmp_path, capsys, where):
    path = tmp_path / "absent.jsonl" if where == "missing" else tmp_path
    assert main(["predict", "--rewards", str(path), "--n", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot read --rewards {str(path)!r}" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("command", [["predict", "--n", "10", "--rewards"], ["replay", "--repeats", "1", "--bank"],
                                     ["curves", "--bank"]])
def test_a_compressed_input_file_is_refused_in_one_line(tmp_path, capsys, command):
    import gzip

    path = tmp_path / "bank.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"prompt_id": "p", "states": [[0.1, 0.2]]}\n'))
    assert main([*command, str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not UTF-8 text" in err and "compressed?" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, match", [
    (["curves", "--real", "/nonexistent/real"], "real data folder '/nonexistent/real' does not exist"),
    (["curves", "--world", "all", "--param", "sigma1=2"], "--param applies to a single --world family"),
    (["curves", "--real", "--param", "sigma1=2"], "--param applies to a single --world family"),
    (["curves", "--world", "gaussian", "--m", "0"], "argument --m: expected integers >= 1, got 0"),
    (["curves", "--world", "gaussian", "--seed", "-3"], "argument --seed: expected an integer >= 0, got -3"),
    (["sim-bank", "--family", "gaussian", "--prompts", "1", "--states", "1", "--completions", "1", "--seed", "-1",
      "--out", "b.jsonl"], "argument --seed: expected an integer >= 0, got -1"),
    (["make-tiny-models", "models", "--seed", "-1"], "argument --seed: expected an integer >= 0"),
])
def test_cli_curves_and_seeds_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_predictions_scale_with_rewards_up_to_the_reward_limit():
    """Rewards are accepted up to 1e100; the upper half's kurtosis raised them to the fourth power,
    which overflowed (with warnings) from about 1e77. A prediction is equivariant under scaling."""
    import warnings

    from pipeline.offline.predictions import predict_file

    rewards = list(np.random.default_rng(0).standard_t(5, size=60))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = predict_file(["a"], [rewards], [10, 100])[0]
        large = predict_file(["a"], [[r * 1e99 for r in rewards]], [10, 100])[0]
    for one, other in zip(small, large):
        assert one["model"] == other["model"] and one["weight"] == other["weight"]
        for key in ("predicted", "lower", "upper"):
            assert other[key] == pytest.approx(one[key] * 1e99, rel=1e-12)
