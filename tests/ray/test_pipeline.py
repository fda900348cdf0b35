"""The distributed pipeline on simulated engines: outputs, determinism, affinity, resume, errors."""

import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import check_rows_independently, run_in_process

from actors.sim import SimGenerator, SimGroundTruth, SimRewardModel
from pipeline.cli import main
from pipeline.distributed.calls import LocalCalls
from pipeline.distributed.config import DriverConfig
from pipeline.distributed.contract import PromptInput, Score
from pipeline.distributed.driver import Driver, NonFiniteRewardError, derive_seed
from pipeline.jobs.config import load_run_config
from pipeline.jobs.searches import run, search_grid
from pipeline.search.methods import DEFAULT_METHODS

pytestmark = pytest.mark.ray

SMALL = ["data.num_prompts=3", "budgets=[16,64]", "plot=false"]


def key(result):
    return (result["prompt_id"], result["method"], result["budget"])


def read_results(directory):
    return [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines()]


def comparable(results):
    fields = ("best_reward", "selected", "rollouts", "tokens_generated", "correct", "pass_at_n", "num_states")
    return sorted((key(r), tuple(r[f] for f in fields)) for r in results)


def test_default_run_writes_every_output(local_ray, tmp_path):
    config = load_run_config(None, [f"output_dir={tmp_path}", "data.num_prompts=4", "budgets=[16,64]"])
    summary = run(config)
    results = read_results(tmp_path)
    assert len(results) == 4 * len(DEFAULT_METHODS) * 2 and len({key(r) for r in results}) == len(results)
    for r in results:
        assert r["rollouts"] == r["budget"]  # the budget is spent exactly, never exceeded
        assert {"prompt_id", "method", "budget", "rollouts", "best_reward", "selected", "correct", "pass_at_n",
                "tokens_generated", "wall_s"} <= set(r)
        assert r["selected"] == "root" or r["selected"].startswith("s")
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored["methods"] == summary["methods"]
    cell = stored["methods"]["slg"]["64"]
    assert {"mean_best_reward", "ci95", "accuracy", "pass_at_n", "rollouts_mean", "prompts"} <= set(cell)
    assert cell["prompts"] == 4 and cell["rollouts_mean"] == 64
    assert (tmp_path / "best_reward_vs_budget.png").exists()  # what it draws: test_report.py
    assert load_run_config(str(tmp_path / "config.yaml")).budgets == [16, 64]


def test_results_do_not_depend_on_replica_count(local_ray, tmp_path):
    one = run(load_run_config(None, SMALL + [f"output_dir={tmp_path / 'one'}"]))
    four = run(load_run_config(None, SMALL + [f"output_dir={tmp_path / 'four'}", "generator.num_replicas=4",
                                              "reward.num_replicas=2", "driver.max_batch_rollouts=7"]))
    assert one["methods"] == four["methods"]
    assert comparable(read_results(tmp_path / "one")) == comparable(read_results(tmp_path / "four"))
    check_rows_independently(read_results(tmp_path / "four"), load_run_config(None, SMALL).seed)  # both could share a bug


def sim_driver(generators, rewards=None, prompts=3, methods=tuple(DEFAULT_METHODS),
               budgets=(16, 64), observer=None, **driver_settings):
    searches = search_grid([PromptInput(f"sim{i}", f"Simulated prompt {i}") for i in range(prompts)], list(methods),
                           list(budgets), load_run_config(None, SMALL).search)
    return Driver(searches, generators, rewards or [SimRewardModel()], DriverConfig(**driver_settings), 0,
                  ground_truth=SimGroundTruth("gaussian"), observer=observer, calls=LocalCalls())


def test_in_process_driver_equals_the_ray_run(local_ray, tmp_path):
    run(load_run_config(None, SMALL + [f"output_dir={tmp_path}"]))
    results, progress = sim_driver([SimGenerator()]).step(None)
    assert progress["done"]
    assert comparable(results) == comparable(read_results(tmp_path))
    check_rows_independently(read_results(tmp_path), load_run_config(None, SMALL).seed)  # both could share a bug


def test_spec_rejection_through_ray_actors_equals_the_in_process_driver(local_ray, tmp_path):
    """Responses grown in chunks across three generator replicas (partial responses pickled between
    actors, continued wherever they land) give the in-process driver's results, tokens included."""
    overrides = ["data.num_prompts=3", "budgets=[16,64]", "plot=false", "methods=[bon,spec_rejection]",
                 "search.spec_rejection.chunk_tokens=64"]
    run(load_run_config(None, overrides + [f"output_dir={tmp_path}", "generator.num_replicas=3", "driver.max_batch_rollouts=7"]))
    rows = read_results(tmp_path)
    assert comparable(rows) == comparable(run_in_process(overrides))
    by_key = {key(r): r for r in rows}
    for (prompt, method, budget), row in by_key.items():
        if method == "spec_rejection":  # its responses are best-of-N's, some stopped early
            bon = by_key[(prompt, "bon", budget)]
            assert row["rollouts"] == budget and row["best_reward"] <= bon["best_reward"]
            assert row["tokens_generated"] < bon["tokens_generated"]


class RecordingGenerator(SimGenerator):
    def __init__(self, log, name):
        super().__init__()
        self.log, self.name = log, name

    def generate(self, requests):
        for request in requests:
            if request.state is not None:
                self.log[(request.prompt.prompt_id, request.state.token_ids)].add(self.name)
        return super().generate(requests)


def test_rollouts_of_a_state_stay_on_one_replica_and_load_is_shared():
    log = defaultdict(set)
    generators = [RecordingGenerator(log, i) for i in range(3)]
    driver = sim_driver(generators, prompts=6, max_batch_rollouts=8, max_inflight_batches=1)
    driver.step(None)
    assert log and all(len(replicas) == 1 for replicas in log.values())
    assert {next(iter(r)) for r in log.values()} == {0, 1, 2}


def test_a_state_spreads_to_another_replica_only_when_its_own_falls_far_behind():
    from pipeline.distributed.replica_pool import CacheAwareRouter

    router = CacheAwareRouter(spill=10)
    state = ("p", 4)
    home = router.choose(state, [0, 0, 0])
    assert router.choose(state, [0, 0, 0]) == home  # no load: stays
    loads = [0, 0, 0]
    loads[home] = 10
    assert router.choose(state, loads) == home  # 10 behind the others: not yet worth a recompute
    loads[home] = 11
    other = router.choose(state, loads)  # 11 behind: spreads to the least-loaded replica
    assert other != home and router.holders[state] == [home, other]
    loads[other] = 5
    assert router.choose(state, loads) == other  # now the less loaded of the two that hold it
    third = ({0, 1, 2} - {home, other}).pop()
    assert router.choose(None, loads) == third  # rollouts from the prompt go to the least loaded
    router.forget(other)  # a replica that died loses its cache
    assert router.holders[state] == [home]
    strict = CacheAwareRouter(spill=0)
    home = strict.choose(state, [0, 0, 0])
    assert strict.choose(state, [10**6 if r == home else 0 for r in range(3)]) == home


def test_seeds_are_the_same_in_every_process():
    import subprocess
    import sys

    probe = "from pipeline.distributed.driver import derive_seed; print(derive_seed(0, 'p1', 's3', 7))"
    other = [int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                env={**__import__("os").environ, "PYTHONHASHSEED": str(salt)}).stdout)
             for salt in (1, 2)]
    assert other == [derive_seed(0, "p1", "s3", 7)] * 2  # never hash(): salted per process
    assert derive_seed(0, "p1", "s3", 7) != derive_seed(0, "p1", "s3", 8)
    assert 0 <= derive_seed("x") < 2**31


class NaNRewardModel(SimRewardModel):
    def score(self, requests):
        return [Score(r.request_id, float("nan")) for r in requests]


def test_non_finite_reward_stops_with_the_prompt_named():
    with pytest.raises(NonFiniteRewardError, match="returned nan for prompt 'sim0'"):
        sim_driver([SimGenerator()], rewards=[NaNRewardModel()], prompts=1, methods=("bon",)).step(None)


def test_resume_after_a_kill_gives_the_uninterrupted_results(local_ray, tmp_path):
    full = tmp_path / "full"
    run(load_run_config(None, SMALL + [f"output_dir={full}"]))
    partial = tmp_path / "partial"
    run(load_run_config(None, SMALL + [f"output_dir={partial}"]))
    lines = (partial / "results.jsonl").read_text().splitlines(keepends=True)
    (partial / "results.jsonl").write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2])  # killed mid-line
    (partial / "summary.json").unlink()
    run(load_run_config(None, SMALL + [f"output_dir={partial}"]))
    resumed = read_results(partial)
    assert len(resumed) == len(lines) and len({key(r) for r in resumed}) == len(resumed)
    assert comparable(resumed) == comparable(read_results(full))
    assert json.loads((partial / "summary.json").read_text())["methods"] == \
        json.loads((full / "summary.json").read_text())["methods"]


def test_a_different_config_in_the_same_output_dir_is_refused(local_ray, tmp_path, capsys):
    run(load_run_config(None, SMALL + [f"output_dir={tmp_path}"]))
    before = (tmp_path / "results.jsonl").read_text()
    code = main(["run", *SMALL, f"output_dir={tmp_path}", "seed=1", "search.tail_fraction=0.3"])
    assert code == 2
    assert "changed: search.tail_fraction, seed" in capsys.readouterr().err
    assert (tmp_path / "results.jsonl").read_text() == before  # nothing written is lost
    (tmp_path / "best_reward_vs_budget.png").write_text("the old run's plot")
    run(load_run_config(None, SMALL + [f"output_dir={tmp_path}", "seed=1", "overwrite=true"]))
    assert len(read_results(tmp_path)) == 3 * len(DEFAULT_METHODS) * 2
    assert not (tmp_path / "best_reward_vs_budget.png").exists()  # plot=false: none of the old run's files stay


@pytest.mark.parametrize("overrides, match", [
    (["budgets=[]"], "budgets is empty"),
    (["budgets=[0]"], "budget N must be a positive integer, got 0 in budgets"),
    (["methods=[bon,beam]"], "unknown method 'beam'"),
    (["search.tail_fraction=1.0"], "tail_fraction must be in (0, 1)"),
    (["budgets=[100]", "search.rollouts_per_node=40", "search.num_states=4"], "more than the budget N=100"),
    (["generator.backend=vllm", "reward.backend=vllm", "methods=[slg]"], "generator.model is required"),
    (["generator.backend=vllm", "reward.backend=vllm", "methods=[slg]", "generator.model=/nonexistent",
      "reward.model=/nonexistent", "data.source=jsonl", "data.path=x"], "is not a model folder"),
    (["generator.backend=vllm", "methods=[oracle]"], "only generator.backend=sim"),
    (["generator.backend=cuda"], "generator.backend"),
    (["unknown_key=1"], "unknown_key"),
    (["generator.sim.family=cauchy"], "unknown world family"),
    (["data.source=jsonl"], "data.path is required"),
    (["reward.cpu_cores=first"], "reward.cpu_cores must list cores"),
    (["driver.affinity_spill_rollouts=-1"], "driver.affinity_spill_rollouts must be >= 0"),
    (["budgets=[16,16]"], "budgets lists budget 16 twice: [16, 16]"),  # each search would be counted twice
    (["seed=-1"], "seed must be an integer >= 0, got -1"),  # as `slg replay --seed` refuses it
    (["search.reward_upper_bound=nan"], "search.reward_upper_bound must be a finite number"),
    (["search.reward_upper_bound=3"], "search.reward_upper_bound=3 is below the rewards of the sim world gaussian"),
    (["search.adaptive.confidence=nan"], "search.adaptive.confidence must be a finite number >= 0, got nan"),
    (["search.adaptive.confidence=.inf"], "search.adaptive.confidence must be a finite number >= 0, got inf"),
    (["search.share.prefix_gap=.inf"], "search.share.prefix_gap must be a finite number >= 0, got inf"),
    # seconds reach Ray's wait and the clocks mid-run: refused before any actor starts
    (["driver.call_timeout_s=-1"], "driver.call_timeout_s must be a finite number of seconds >= 0, got -1.0"),
    (["driver.step_s=0"], "driver.step_s must be a finite number of seconds > 0, got 0.0"),
    (["driver.replica_retry_s=nan"], "driver.replica_retry_s must be a finite number of seconds >= 0, got nan"),
    (["driver.replica_recovery_timeout_s=-5"], "driver.replica_recovery_timeout_s must be a finite number of seconds > 0"),
    (["driver.progress_interval_s=.inf"], "driver.progress_interval_s must be a finite number of seconds >= 0, got inf"),
    (["generator.sim.latency_per_token_s=-1"], "generator.sim.latency_per_token_s must be a finite number of seconds >= 0"),
    (["ray.num_cpus=-1"], "ray.num_cpus must be >= 0, got -1"),
    (["reward.num_gpus_per_replica=-0.5"], "reward.num_gpus_per_replica must be >= 0, got -0.5"),
    (["generator.num_cpus_per_replica=nan"], "generator.num_cpus_per_replica must be >= 0, got nan"),
])
def test_bad_run_config_is_refused_before_any_actor(overrides, match, capsys, tmp_path):
    code = main(["run", f"output_dir={tmp_path / 'out'}", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert match in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"budgets: [64\n", "is not valid YAML at line 2, column 1: did not find expected ',' or ']'"),
    (b"- a\n- b\n", "must hold a mapping of keys (like configs/tiny_cpu.yaml), not a list"),
    (b"seed: \xff\n", "cannot read config file"),
    ("folder", "is a folder, not a file"),
])
def test_a_config_file_that_is_not_a_yaml_mapping_is_refused_in_one_line(tmp_path, capsys, content, match):
    path = tmp_path / "c.yaml"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert main(["run", "--config", str(path), f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_an_empty_prompt_is_refused(tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": " ", "answer": "3"}\n')
    assert main(["run", f"output_dir={tmp_path / 'o'}", "data.source=jsonl", f"data.path={data}"]) == 2
    assert "line 2: the problem field 'problem' is empty" in capsys.readouterr().err


def test_a_simulated_run_has_accuracy_but_no_majority_vote(local_ray, tmp_path):
    """Simulated rollouts are graded (the world says which are right) but carry no answer to vote
    on: the vote is absent ("-"), not 0 (it printed 0.000 beside an accuracy of 1.000)."""
    summary = run(load_run_config(None, SMALL + [f"output_dir={tmp_path}", "generator.sim.family=bimodal"]))
    rows = read_results(tmp_path)
    assert {r["majority_correct"] for r in rows} == {None} and None not in {r["pass_at_n"] for r in rows}
    cell = summary["methods"]["bon"]["64"]
    assert cell["majority_vote"] is None and cell["pass_at_n"] is not None


def test_summary_interval_is_over_prompts(local_ray, tmp_path):
    run(load_run_config(None, SMALL + [f"output_dir={tmp_path}"]))
    results = [r for r in read_results(tmp_path) if r["method"] == "bon" and r["budget"] == 64]
    rewards = np.array([r["best_reward"] for r in results])
    cell = json.loads((tmp_path / "summary.json").read_text())["methods"]["bon"]["64"]
    assert cell["mean_best_reward"] == pytest.approx(rewards.mean())
    assert cell["ci95"] == pytest.approx(1.96 * rewards.std(ddof=1) / np.sqrt(len(rewards)))


def test_replicas_ask_ray_for_the_configured_gpus_and_pack_tensor_parallel_groups(local_ray, tmp_path):
    from ray.util import placement_group_table

    before = len(placement_group_table())
    # 4 logical GPUs: a tensor-parallel generator of 2 (one placement group) and two RMs of 0.5 each.
    run(load_run_config(None, SMALL + [f"output_dir={tmp_path}", "generator.tensor_parallel_size=2",
                                       "generator.num_gpus_per_replica=2", "reward.num_replicas=2",
                                       "reward.num_gpus_per_replica=0.5"]))
    groups = list(placement_group_table().values())[before:]
    assert len(groups) == 1
    assert all(g["strategy"] == "STRICT_PACK" and len(g["bundles"]) == 2 for g in groups)
    assert all(all(b.get("GPU") == 1 for b in g["bundles"].values()) for g in groups)


@pytest.mark.parametrize(("overrides", "message"), [
    (["generator.num_replicas=3", "generator.num_gpus_per_replica=2"], "needs 6 GPUs, the local Ray instance has 4"),
    (["generator.num_cpus_per_replica=1.5", "reward.num_cpus_per_replica=1"], "needs 2.5 CPUs, the local Ray instance has 2"),
    # a tensor-parallel group holds a CPU per GPU: two groups of 2 need 4
    (["generator.num_replicas=2", "generator.tensor_parallel_size=2", "generator.num_gpus_per_replica=2"],
     "needs 4 CPUs, the local Ray instance has 2"),
])
def test_more_than_a_local_instance_has_is_refused(local_ray, tmp_path, overrides, message, monkeypatch):
    """Ray would wait forever for resources a fixed local instance does not have (a run hung on CPUs).
    Asked of the replica factory itself, so that a missing check fails rather than hangs: it returns
    pending actors (a run would wait for them), and a placement group is refused here rather than
    waited for."""
    import importlib

    from pipeline.distributed.session import create_replicas

    def unplaceable(bundles, **options):
        raise AssertionError(f"asked Ray for a placement group of {bundles}, which this instance cannot hold")

    # the module (ray.util.placement_group, as an attribute, is its function)
    monkeypatch.setattr(importlib.import_module("ray.util.placement_group"), "placement_group", unplaceable)
    with pytest.raises(ValueError, match=message):
        create_replicas(load_run_config(None, SMALL + [f"output_dir={tmp_path}", *overrides]), "sim", local=True)


def test_a_policy_that_overspends_is_stopped_by_the_driver(monkeypatch):
    from pipeline.search.bon import BestOfN
    from pipeline.search.protocol import BudgetExceededError, Request

    def greedy(self):
        yield [Request.uniform(-1, self.budget + 1, self.batch_size)]

    monkeypatch.setattr(BestOfN, "_search", greedy)
    with pytest.raises(BudgetExceededError, match="asked for 17 rollouts"):
        sim_driver([SimGenerator()], prompts=1, methods=("bon",), budgets=(16,)).step(None)


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_validates(path, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.chdir(path.parents[1])
    raw, overrides = OmegaConf.load(path), []
    for section in ("generator", "reward"):
        model = OmegaConf.select(raw, f"{section}.model")
        if model and str(model).startswith("outputs/"):  # written by `slg make-tiny-models`: stand in for it
            stand_in = tmp_path / section
            stand_in.mkdir()
            (stand_in / "config.json").write_text("{}")
            overrides.append(f"{section}.model={stand_in}")
    config = load_run_config(str(path), overrides)
    assert config.methods and config.budgets


def test_collect_writes_a_bank_replay_can_read_and_resumes_without_duplicates(local_ray, tmp_path, capsys):
    from pipeline.offline.bank import read_bank
    from pipeline.offline.replay import replay

    bank, texts = tmp_path / "bank.jsonl", tmp_path / "texts.jsonl"
    argv = ["collect", "--states", "4", "--completions", "6", "--out", str(bank), "--texts", str(texts),
            "data.num_prompts=3", "generator.sim.family=bimodal"]
    lines = []  # the slg logger's lines (it does not propagate to the root, where caplog listens)
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("slg").addHandler(handler)
    try:
        assert main(argv) == 0
    finally:
        logging.getLogger("slg").removeHandler(handler)
    assert any(line.startswith("prefix scores of the 3 prompts collected: correlation") for line in lines)
    prompts = read_bank(bank)  # validates the bank format (docs/formats.md)
    assert [p.prompt_id for p in prompts] == ["sim0", "sim1", "sim2"]
    assert all(p.num_states == 4 and list(p.lengths) == [6] * 4 and p.correct is not None for p in prompts)
    side = [json.loads(line) for line in texts.read_text().splitlines()]
    bank_rows = [json.loads(line) for line in bank.read_text().splitlines()]
    for row, bank_row in zip(side, bank_rows):  # same prompts, states and shape as the bank
        assert row["prompt_id"] == bank_row["prompt_id"] and row["state_nodes"] == bank_row["meta"]["state_nodes"]
        assert row["state_texts"] == bank_row["state_texts"]  # the bank carries each state's prefix
        assert [len(r) for r in row["responses"]] == [len(s) for s in bank_row["states"]]
        for state_text, responses in zip(row["state_texts"], row["responses"]):
            assert state_text and all(text.startswith(state_text) for text in responses)  # a rollout continues its state
        assert len({t for r in row["responses"] for t in r}) == 24  # every rollout its own text
    lines = bank.read_text().splitlines(keepends=True)
    bank.write_text(lines[0] + lines[1][:40])  # killed while writing the second prompt's bank line
    assert main(argv) == 0
    assert "collected 2 prompts" in capsys.readouterr().out
    again = read_bank(bank)
    assert [p.prompt_id for p in again] == ["sim0", "sim1", "sim2"]
    assert [p.state_rewards[0].tolist() for p in again] == [p.state_rewards[0].tolist() for p in prompts]
    assert [json.loads(line) for line in texts.read_text().splitlines()] == side  # side lines not duplicated
    results = replay(again, ["bon", "slg"], [16], repeats=5, workers=1)
    assert all(r.accuracy is not None for r in results)


def test_collect_keeps_only_real_states_when_some_root_rollouts_are_too_short(local_ray, tmp_path):
    from pipeline.offline.bank import read_bank

    bank, texts = tmp_path / "bank.jsonl", tmp_path / "texts.jsonl"
    assert main(["collect", "--states", "6", "--completions", "3", "--out", str(bank), "--texts", str(texts),
                 "data.num_prompts=4", "generator.sim.short_rollout_fraction=0.5"]) == 0
    rows = [json.loads(line) for line in bank.read_text().splitlines()]
    side = [json.loads(line) for line in texts.read_text().splitlines()]
    assert [p.num_states for p in read_bank(bank)] == [len(r["meta"]["state_nodes"]) for r in rows]
    assert any(len(r["states"]) < 6 for r in rows)  # short root rollouts are not states
    for row, side_row in zip(rows, side):
        assert all(name.startswith("s") and int(name[1:]) >= 0 for name in row["meta"]["state_nodes"])
        assert all(len(state) == 3 for state in row["states"])
        assert side_row["state_nodes"] == row["meta"]["state_nodes"]
        assert [len(r) for r in side_row["responses"]] == [3] * len(row["states"])


@pytest.mark.parametrize("keep_texts", [False, True])
def test_collect_holds_response_texts_only_when_asked(keep_texts):
    from pipeline.jobs.collection import SampleRecorder

    (result,), _ = sim_driver([SimGenerator()], prompts=1, methods=("bon",), budgets=(8,),
                              observer=SampleRecorder(keep_texts)).step(None)
    root = result["samples"]["root"]
    assert len(root.rewards) == 8 and len(root.texts) == (8 if keep_texts else 0)


def test_collect_refuses_bad_sizes(tmp_path, capsys):
    assert main(["collect", "--states", "0", "--completions", "4", "--out", str(tmp_path / "b.jsonl")]) == 2
    assert "must be >= 1, got 0 and 4" in capsys.readouterr().err
    bank = str(tmp_path / "b.jsonl")
    assert main(["collect", "--states", "2", "--completions", "4", "--out", bank, "--texts", bank]) == 2
    assert "--texts must be another file than the bank" in capsys.readouterr().err


def test_bench_workload_cycles_a_small_dataset_into_distinct_searches(tmp_path):
    from pipeline.jobs.benchmark import workload_prompts

    data = load_run_config(None, ["data.source=jsonl", f"data.path={tmp_path / 'd.jsonl'}"]).data
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"problem": f"q{i}", "answer": str(i)}) + "\n" for i in range(3)))
    prompts = workload_prompts(data, 7)
    assert [p.prompt_id for p in prompts] == ["d-0", "d-1", "d-2", "d-0#1", "d-1#1", "d-2#1", "d-0#2"]
    assert [(p.text, p.answer) for p in prompts] == [(f"q{i % 3}", str(i % 3)) for i in range(7)]
    assert [p.prompt_id for p in workload_prompts(data, 2)] == ["d-0", "d-1"]


def test_free_reward_model_is_stable_spread_and_serves_a_whole_bench_run(local_ray):
    from actors.sim import FreeRewardModel
    from pipeline.distributed.contract import ScoreRequest
    from pipeline.jobs.benchmark import bench_pipeline
    from pipeline.jobs.prompts import load_prompts

    requests = [ScoreRequest(i, PromptInput("p", "x"), f"response {i % 50}") for i in range(100)]
    scores = [s.reward for s in FreeRewardModel().score(requests)]
    assert scores[:50] == scores[50:] and len(set(scores)) == 50 and all(0 <= s < 1 for s in scores)
    config = load_run_config(None, ["data.num_prompts=2", "methods=[slg]", "budgets=[32]"])
    metrics = bench_pipeline(config, load_prompts(config.data), "slg", 32, free_reward=True)["metrics"]
    assert metrics["free_reward"] and metrics["rollouts_per_s"] * metrics["wall_s"] == pytest.approx(64)


def test_bench_measures_the_pipeline_and_replays_its_exact_workload_on_a_bare_engine(local_ray, monkeypatch):
    from pipeline.jobs.benchmark import bench_pipeline, bench_raw_engine
    from pipeline.jobs.prompts import load_prompts

    config = load_run_config(None, ["data.num_prompts=3", "methods=[slg]", "budgets=[64]"])
    measured = bench_pipeline(config, load_prompts(config.data), "slg", 64, record_requests=True, repeats=2)
    metrics, requests = measured["metrics"], measured["requests"]
    assert len(requests) == 3 * 64 and len({r.request_id for r in requests}) == 3 * 64  # the first run's
    first, second = measured["runs"]
    assert first is metrics and second["rollouts"] == 3 * 64
    assert second["mean_best_reward"] != first["mean_best_reward"]  # a seed of its own: other rollouts
    assert all(0.0 <= b <= 1.0 for b in metrics["generator_busy"] + metrics["reward_busy"])
    parts = [metrics[f"driver_{part}_us_per_rollout"] for part in ("policy", "calls", "bookkeeping")]
    assert all(part > 0 for part in parts)  # each part is work the driver did (its split: test_driver.py)
    assert sum(parts) == pytest.approx(metrics["driver_us_per_rollout"], rel=1e-9)
    # The sim generator reports a state rollout's T state tokens as cached out of 32 + len(prompt) / 4 + T:
    # the share the bench reports is the one these requests imply.
    state_requests = [r for r in requests if r.state is not None]
    state_tokens = config.generator.state_tokens
    expected = state_tokens * len(state_requests) / sum(32 + len(r.prompt.text) // 4 + state_tokens for r in state_requests)
    assert metrics["state_cached_share"] == pytest.approx(expected, rel=1e-12)
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "unset")
    monkeypatch.delenv("VLLM_LOGGING_LEVEL")  # restored (unset) after the test
    raw = bench_raw_engine(config, requests)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"  # its engine logs only errors (test_vllm.py)
    assert raw["rollouts"] == 3 * 64
    assert raw["tokens_generated"] == metrics["tokens_generated"]  # same seeds: the same tokens

