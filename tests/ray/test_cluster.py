"""Cluster files and GPU configs: what can be checked without a cluster or a GPU."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.jobs.config import load_run_config

ROOT = Path(__file__).resolve().parents[2]
GPU_CONFIGS = ["llama1b_skywork8b.yaml", "qwen7b_skywork8b.yaml"]
GPUS_PER_NODE = 8


def gpus_needed(config) -> float:
    gen, rm = config.generator, config.reward
    return gen.num_replicas * gen.num_gpus_per_replica + rm.num_replicas * rm.num_gpus_per_replica


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_configs_fit_one_8_gpu_node(name):
    config = load_run_config(str(ROOT / "configs" / name))
    assert config.generator.backend.value == "vllm" and config.reward.backend.value == "vllm"
    assert config.generator.state_tokens == 100 and config.budgets == [100, 500, 1000]
    assert config.search.rollouts_per_node is None and config.search.num_states is None  # default schedule
    assert gpus_needed(config) == GPUS_PER_NODE
    # Co-located on a GPU (0.5 + 0.5 to Ray), the two engines' memory shares must fit together.
    assert config.generator.gpu_memory_utilization + config.reward.gpu_memory_utilization <= 0.95
    assert config.generator.max_tokens < config.generator.max_model_len


def test_runtime_env_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    data = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    RuntimeEnv(**data)  # raises on unknown fields
    assert ".venv" in data["excludes"]


def test_submit_script_runs_the_project_cli():
    script = ROOT / "cluster" / "submit.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "python -m pipeline.run run --config" in script.read_text()
    done = subprocess.run([sys.executable, "-m", "pipeline.run", "run", "--help"], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0 and "--config" in done.stdout


def test_kuberay_job_runs_a_shipped_config_on_cpu_head_and_gpu_workers():
    from ray.runtime_env import RuntimeEnv

    job = yaml.safe_load((ROOT / "cluster" / "kuberay_rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"].startswith("ray.io/")
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:4] == ["python", "-m", "pipeline.run", "run"]
    # the cluster is torn down after the job: the results must go to a bucket, with credentials for it
    assert any(w.startswith("output_dir=s3://") for w in words)
    head_env = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert head_env == [{"secretRef": {"name": "slg-s3"}}]
    config = load_run_config(str(ROOT / words[words.index("--config") + 1]), words[words.index("--config") + 2:])
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/home/ray/slg"  # the checkout inside the image
    RuntimeEnv(**{**runtime_env, "working_dir": str(ROOT)})  # Ray checks the path exists: use this one
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (workers,) = cluster["workerGroupSpecs"]
    per_pod = int(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert per_pod * workers["maxReplicas"] >= gpus_needed(config)
    assert per_pod >= max(config.generator.tensor_parallel_size, 1)


def test_ray_up_cluster_has_a_gpu_free_head_and_autoscaling_gpu_workers():
    cluster = yaml.safe_load((ROOT / "cluster" / "ray_up.yaml").read_text())
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"]["GPU"] == 0
    workers = types["gpu_workers"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    config = load_run_config(str(ROOT / "configs" / GPU_CONFIGS[0]))
    assert workers["resources"]["GPU"] * workers["max_workers"] >= gpus_needed(config)
    assert any("[vllm,s3]" in command for command in cluster["setup_commands"])  # output_dir=s3://...
