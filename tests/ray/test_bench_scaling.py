"""`slg bench --scaling`: each replica count runs on its own local Ray instance with logical GPUs.
This module holds no shared in-process Ray."""

import pytest

from pipeline.jobs.config import load_run_config

pytestmark = pytest.mark.ray


def test_bench_scaling_runs_each_replica_count_on_logical_gpus():
    from pipeline.jobs.benchmark import bench_scaling

    config = load_run_config(None, ["methods=[bon]", "budgets=[16]"])
    rows = bench_scaling(config, 2, "bon", 16, [1, 2])
    assert [(r["replicas"], r["prompts"]) for r in rows] == [(1, 2), (2, 4)]  # the same load per replica
    # efficiency(k) = throughput(k) / (k x throughput(1)): weak scaling against one replica
    assert rows[1]["scaling_efficiency"] == pytest.approx(rows[1]["rollouts_per_s"] / (2 * rows[0]["rollouts_per_s"]))
