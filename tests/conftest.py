"""Shared fixtures. Ray instances are module-scoped so that a module that starts its own cluster
(``ray start`` for the job-submission test) never meets another one."""

import pytest


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, logging_level="WARNING")  # logical GPUs
    yield ray
    ray.shutdown()
