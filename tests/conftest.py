"""Shared fixtures and helpers of every tier (tests/README.md). Ray instances are module-scoped so that
a module that starts its own cluster (the job-submission head, the multi-node cluster) never meets
another one. Tests start and stop only their own processes, by id (the `ray` CLI's stop command ends
every Ray instance on the machine)."""

import importlib
import os
import time
import uuid
from pathlib import Path

import pytest

# `make test` runs two pytest-xdist workers with --dist loadfile, which hands out whole modules in
# collection order. Alphabetical order put the vLLM tier, whose modules take minutes each, last: one
# worker then ran them alone while the other sat idle. The slow tiers first, the many small core
# modules after them, keep both busy to the end.
TIER_ORDER = ("tests/vllm/", "tests/ray/")


def pytest_collection_modifyitems(items):
    def tier(item):
        path = item.nodeid.split("::")[0]
        return next((rank for rank, prefix in enumerate(TIER_ORDER) if path.startswith(prefix)), len(TIER_ORDER))
    items.sort(key=tier)  # stable: each module's tests stay together and in their order


def require(module: str):
    """``module`` imported, or the calling test module skipped where it is not installed (a laptop
    without the CPU build of vLLM). Under ``CI=true`` a missing module fails the run instead: CI
    installs every tier's packages, and a tier that quietly skips there tests nothing."""
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


@pytest.fixture(scope="module")
def local_ray():
    ray = require("ray")
    # address="local": never the cluster another test or user started with `ray start` (ray.init's default)
    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, logging_level="WARNING")  # logical GPUs
    yield ray
    ray.shutdown()


def process_marker() -> tuple[str, dict]:
    """A unique environment variable for the processes a test starts: every descendant (Ray's
    head, raylet, workers, vLLM engine processes) inherits it, so they can be found afterwards."""
    marker = uuid.uuid4().hex
    return marker, {**os.environ, "SLG_TEST_PROCESS_MARKER": marker}


def marked_processes(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (zombies and this test process excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if marker.encode() in environ.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def command_line(pid: int) -> str:
    """A process's command line ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def wait_until_gone(marker: str, timeout_s: float) -> list[int]:
    """Wait up to ``timeout_s`` for every marked process to end; those still alive."""
    deadline = time.time() + timeout_s
    while (left := marked_processes(marker)) and time.time() < deadline:
        time.sleep(1)
    return left


def run_in_process(overrides, observer=None, collect=False):
    """The same searches by an in-process driver on sim engines, without Ray or faults (results do not
    depend on replicas or timing, so this is the undisturbed run's result)."""
    from actors.sim import SimGenerator, SimGroundTruth, SimRewardModel
    from pipeline.distributed.calls import LocalCalls
    from pipeline.distributed.driver import Driver
    from pipeline.distributed.search_record import SearchSpec
    from pipeline.distributed.session import generator_kwargs, reward_kwargs
    from pipeline.jobs.collection import CollectStates
    from pipeline.jobs.config import load_run_config
    from pipeline.jobs.prompts import load_prompts
    from pipeline.jobs.searches import search_grid

    config = load_run_config(None, [*overrides, "generator.sim.latency_per_token_s=0"])
    prompts = load_prompts(config.data)
    if collect:
        budget = config.collect.num_states * (config.collect.completions_per_state + 1)
        searches = [SearchSpec(p, "collect", budget, CollectStates, config.collect) for p in prompts]
    else:
        searches = search_grid(prompts, config.methods, config.budgets, config.search)
    driver = Driver(searches, [SimGenerator(**generator_kwargs(config))], [SimRewardModel(**reward_kwargs(config))],
                    config.driver, config.seed, ground_truth=SimGroundTruth(config.generator.sim.family),
                    observer=observer, calls=LocalCalls())
    rows, progress = driver.step(None)
    assert progress["done"]
    return rows


def nan_every(period: int, reward_model: type) -> type:
    """``reward_model`` whose every ``period``-th response (by request id) scores NaN; a prefix asked
    for with it (``ScoreRequest.prefix_text``) scores as ``reward_model`` scores it."""

    class NaNEvery(reward_model):
        def score(self, requests):
            scores = super().score(requests)
            for score in scores:
                if score.request_id % period == 0:
                    score.reward = float("nan")
            return scores

    NaNEvery.__name__ = f"NaNEvery{period}{reward_model.__name__}"
    return NaNEvery


def root_rewards(seed: int, prompt_id: str, count: int, family: str = "gaussian") -> list[float]:
    """The rewards of a prompt's first ``count`` root rollouts, recomputed without the driver: the sim
    generator and reward model called directly on requests with the documented seeds
    (``derive_seed(run seed, prompt id, "root", index)``). Root rollout k is the same for every method."""
    from actors.sim import SimGenerator, SimRewardModel
    from pipeline.distributed.contract import PromptInput, RolloutRequest, ScoreRequest
    from pipeline.distributed.driver import derive_seed

    prompt = PromptInput(prompt_id, "")  # the sim's rewards depend on the seed alone
    requests = [RolloutRequest(i, prompt, None, derive_seed(seed, prompt_id, "root", i)) for i in range(count)]
    rollouts = SimGenerator(family=family).generate(requests)
    scores = SimRewardModel(family=family).score([ScoreRequest(r.request_id, prompt, r.response_text) for r in rollouts])
    return [score.reward for score in scores]


def check_rows_independently(rows, seed: int, family: str = "gaussian") -> None:
    """What a run's rows must say whatever else they share with a run they are compared with: every
    search spent exactly its budget; a best-of-N row's best reward is the best of its N root rollouts;
    an slg row's is at least the best of the m root rollouts it always draws (m of the schedule)."""
    from pipeline.stats.schedule import default_schedule

    assert rows and all(row["rollouts"] == row["budget"] for row in rows)
    checked = 0
    for row in rows:
        if row["method"] == "bon":
            assert row["best_reward"] == max(root_rewards(seed, row["prompt_id"], row["budget"], family)), row
            checked += 1
        elif row["method"] == "slg":
            m, _ = default_schedule(row["budget"])
            assert row["best_reward"] >= max(root_rewards(seed, row["prompt_id"], m, family)), row
    assert checked, "no best-of-N row to check"
