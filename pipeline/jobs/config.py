"""Typed configuration of the jobs (``slg run``, ``collect``, ``bench``): the schema, loading, validation.

One dataclass schema merged through OmegaConf (``structured`` -> ``merge`` -> ``to_object``);
unknown keys are refused by the structured schema. Each section checks its own fields; what
depends on several sections is checked by :func:`validate_run_config`, before any actor starts.
YAML recipes in ``configs/`` hold only what differs from these defaults, which are the embedded
default run (simulated engines, a minute on two cores). The engine sections live in
``pipeline.distributed.config``, the search's in ``pipeline.search.config``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.distributed.config import (
    Backend,
    DriverConfig,
    GeneratorConfig,
    RayConfig,
    RewardConfig,
    as_plain_dict,
    check_seconds,
)
from pipeline.errors import ConfigError
from pipeline.search.config import SearchConfig, check_bound_covers, validate_search_config
from pipeline.search.methods import DEFAULT_METHODS, check_budgets, check_methods, policy_class


class DataSource(str, Enum):
    sim = "sim"          # synthetic prompts for the sim backend
    jsonl = "jsonl"      # a local JSONL file (data.path)
    parquet = "parquet"  # a local Parquet file (data.path)
    hf = "hf"            # a Hugging Face dataset by name (data.name), from the hub or its cache


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

    def check(self) -> None:
        for name in ("num_prompts", "skip_prompts"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass
class StorageConfig:
    """Outputs at a URL (``output_dir=s3://...``): staged locally, uploaded whole at each checkpoint."""

    checkpoint_interval_s: float = 30.0     # upload results at most this often (and always at the end)

    def check(self) -> None:
        check_seconds("storage.checkpoint_interval_s", self.checkpoint_interval_s)


@dataclass
class CollectConfig:
    """``slg collect``: S states per prompt and M scored rollouts from each, written as a reward bank."""

    num_states: int = 16                    # S: states per prompt (root rollouts cut at T tokens)
    completions_per_state: int = 64         # M: scored rollouts from each state
    out: Optional[str] = None               # a folder or URL of Parquet shards, or a path ending in .jsonl; None: OUTPUT_DIR/bank
    texts: Optional[str] = None             # JSONL banks: also write state and response texts here (a side file)
    responses: bool = False                 # Parquet banks: also write each rollout's response (a responses column)
    prompts_per_shard: Optional[int] = None  # Parquet banks; None: as many as hold about SHARD_REWARDS rewards
    rollouts_per_round: int = 1024          # a prompt's rollouts out at once (its states' M are asked in rounds)

    def check(self, bank: str) -> None:
        if self.num_states < 1 or self.completions_per_state < 1:
            raise ConfigError(f"--states and --completions (collect.num_states, collect.completions_per_state) must be "
                              f">= 1, got {self.num_states} and {self.completions_per_state}")
        for name in ("prompts_per_shard", "rollouts_per_round"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"collect.{name} must be >= 1, got {getattr(self, name)!r}")
        jsonl = is_jsonl_bank(bank)
        if self.texts is not None and not jsonl:
            raise ConfigError(f"--texts writes a side file of a JSONL bank; the Parquet bank {bank!r} keeps texts in "
                              "its own columns: use --responses")
        if self.responses and jsonl:
            raise ConfigError(f"--responses writes a column of a Parquet bank; the JSONL bank {bank!r} keeps texts in "
                              "a side file: use --texts FILE")
        if not jsonl and bank.lower().endswith(".parquet"):
            raise ConfigError(f"--out {bank!r}: a Parquet bank is a folder of shards (name it without .parquet), "
                              "or give a path ending in .jsonl")
        if self.texts is not None and os.path.abspath(self.texts) == os.path.abspath(bank):
            raise ConfigError(f"--texts must be another file than the bank, got {self.texts!r} for both")


@dataclass
class BenchConfig:
    """``slg bench``: one fixed workload through the pipeline (and optionally a bare engine)."""

    prompts: int = 16                       # prompts (per replica with replicas); cycled when the data has fewer
    budget: int = 64
    method: str = "slg"
    raw: bool = False                       # also replay the same requests on one bare engine
    free_reward: bool = False               # score at no cost: the generator path alone
    replicas: list[int] = field(default_factory=list)  # scaling: generator replica counts, e.g. [1, 2, 4, 8]
    repeats: int = 1                        # the pipeline workload this many times on the same replicas
    out: Optional[str] = None               # the measurements as JSON

    def check(self) -> None:
        policy_class(self.method)
        if self.prompts < 1:
            raise ConfigError(f"--prompts must be >= 1, got {self.prompts}")
        check_budgets([self.budget], "--budget")
        if any(count < 1 for count in self.replicas):
            raise ConfigError(f"--replicas must list counts >= 1, got {self.replicas}")
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {self.repeats}")
        if self.repeats > 1 and self.replicas:
            raise ConfigError(f"--repeats {self.repeats} cannot go with --replicas {','.join(map(str, self.replicas))}: "
                              "scaling runs the workload once per replica count")


@dataclass
class RunConfig:
    output_dir: str = "outputs/default"
    seed: int = 0
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))  # names of pipeline.search.methods
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


def load_run_config(path: str | None = None, overrides: list[str] | None = None,
                    settings: dict | None = None) -> RunConfig:
    """Schema defaults, then the YAML file, then a command's own flags (``settings``: dotted key ->
    value), then ``KEY=VALUE`` overrides; ``ConfigError`` on any bad key or value."""
    config = merged_config(RunConfig, path, settings, overrides)
    validate_run_config(config)
    return config


def load_search_config(overrides: list[str] | None = None) -> SearchConfig:
    """The search section alone from ``search.KEY=VALUE`` overrides (``slg replay``: the same keys as
    ``slg run``); any other key is refused. Cross-field checks need the budgets: the caller's."""
    for item in overrides or []:
        if not item.partition("=")[0].strip().startswith("search."):
            raise ConfigError(f"override {item!r}: this command takes search options only (search.KEY=VALUE)")
    return merged_config(RunConfig, None, None, overrides).search


def merged_config(schema, path: str | None, settings: dict | None, overrides: list[str] | None):
    """The one OmegaConf merge of every command: ``schema`` (a dataclass), YAML file, settings, overrides."""
    try:
        merged = OmegaConf.structured(schema)
        if path is not None:
            merged = OmegaConf.merge(merged, _load_yaml_mapping(path))
        for key, value in (settings or {}).items():
            OmegaConf.update(merged, key, value, merge=True)
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not KEY=VALUE")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides or [])))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"bad configuration: {_first_line(error)}") from None


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


def config_as_dict(config: RunConfig) -> dict:
    return as_plain_dict(config)


def config_as_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def validate_run_config(config: RunConfig) -> None:
    """Each section's own checks, then what depends on several of them; ``ConfigError`` naming the key."""
    check_methods(config.methods)
    check_budgets(config.budgets)
    if isinstance(config.seed, bool) or not config.seed >= 0:  # numpy's generators take no negative seed
        raise ConfigError(f"seed must be an integer >= 0, got {config.seed!r}")
    validate_search_config(config.search, config.budgets)
    gen, rm = config.generator, config.reward
    if "oracle" in config.methods and gen.backend != Backend.sim:
        raise ConfigError("method 'oracle' needs true state values, which only generator.backend=sim has")
    for section in (config.generator, config.reward, config.driver, config.ray, config.data, config.bench, config.storage):
        section.check()
    config.collect.check(bank_path(config))
    if (gen.backend == Backend.sim) != (rm.backend == Backend.sim):
        raise ConfigError(f"generator.backend={gen.backend.value} with reward.backend={rm.backend.value}: "
                          "the sim reward model scores only sim rollouts, and real models need real text")
    if gen.backend == Backend.sim:
        from pipeline.offline.worlds import make_world
        world = make_world(gen.sim.family, **gen.sim.params)
        check_bound_covers(config.search, world.reward_bounds[1], f"the sim world {world.describe()}")
    if config.data.source == DataSource.sim and gen.backend != Backend.sim:
        raise ConfigError("data.source=sim makes synthetic prompts for the sim backend; real engines need "
                          "data.source=jsonl|parquet|hf")


def bank_path(config: RunConfig) -> str:
    """Where ``slg collect`` writes its bank: ``collect.out``, or the folder ``OUTPUT_DIR/bank``."""
    return config.collect.out or os.path.join(config.output_dir, "bank")


def is_jsonl_bank(target: str) -> bool:
    """A bank written as JSONL lines (a target ending in .jsonl), not as a folder of Parquet shards."""
    return str(target).lower().endswith(".jsonl")
