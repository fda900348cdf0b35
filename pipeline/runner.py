"""``slg run`` and ``slg collect``: start (or join) Ray, place the replicas and the driver actor,
stream results to disk.

This is orchestration only: the search lives in the policies, the scheduling in the driver, the
engines in ``actors``. Outputs in ``output_dir``: ``results.jsonl`` (appended and flushed as each
(prompt, method, budget) finishes), ``summary.json`` and ``config.yaml`` (written atomically) and
``best_reward_vs_budget.png``. Rerunning with the same ``output_dir`` and config resumes: finished
searches are skipped. A different config there is refused unless ``overwrite=true``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from actors.registry import load_backend
from pipeline.bank import atomic_write_text
from pipeline.prompts import load_prompts
from pipeline.report import format_summary, plot_summary, summarise
from pipeline.run_config import Backend, RunConfig, config_as_dict, config_as_yaml

log = logging.getLogger("slg")

# Keys that may change between a run and its resumption: they do not change any result.
RESUMABLE_KEYS = ("output_dir", "overwrite", "plot", "driver.", "ray.")


def run(config: RunConfig) -> dict:
    """Run the configured searches to completion; returns the summary."""
    prompts = load_prompts(config.data)  # bad data fails here, before Ray starts
    output = Path(config.output_dir)
    previous = prepare_output_dir(output, config)
    skip = {(r["prompt_id"], r["method"], r["budget"]) for r in previous}
    total = len(prompts) * len(config.methods) * len(config.budgets)
    log.info("running %d searches (%d prompts x %d methods x %d budgets), %d already done, into %s",
             total, len(prompts), len(config.methods), len(config.budgets), len(previous), output)
    results = list(previous)

    def keep(result: dict) -> dict:
        results.append(result)
        return result

    progress = drive(config, prompts, config.methods, config.budgets, config.search, skip, output / "results.jsonl",
                     keep, resumed=len(previous))
    summary = summarise(results, config.methods, config.budgets)
    summary["throughput"] = {k: progress[k] for k in ("elapsed_s", "rollouts_per_s", "tokens_per_s", "rollouts_scored",
                                                      "tokens_generated", "prompt_tokens", "cached_prompt_tokens",
                                                      "rm_tokens", "driver_busy_s", "replica_failures")}
    atomic_write_text(output / "summary.json", json.dumps(summary, indent=2) + "\n")
    if config.plot:
        plot_summary(summary, output / "best_reward_vs_budget.png")
    print(format_summary(summary), flush=True)
    return summary


def drive(config: RunConfig, prompts, methods, budgets, search, skip, sink: Path, line_of, resumed: int = 0,
          record_samples: bool = False, record_texts: bool = False,
          side_sink: tuple[Path, object] | None = None) -> dict:
    """Start (or join) Ray, place the replicas and the driver actor, and run every search not in
    ``skip``; each finished search becomes a line of ``sink`` (``line_of(result)``, None: no line),
    appended, flushed and fsynced at once. ``side_sink`` = (path, line_of) gets its line first, so a
    search in ``sink`` always has its side line too (a kill in between leaves only a side line,
    which the caller drops on resume). Returns the driver's final progress."""
    started_ray = init_ray(config)
    import ray

    from pipeline.driver import Driver

    try:
        generators, rewards = create_replicas(config, local=started_ray or is_single_node())
        driver = ray.remote(num_cpus=0)(Driver).remote(
            prompts, methods, budgets, search, config.seed, generators, rewards, config.driver,
            world=world_of(config), skip=skip, nonfinite=config.reward.nonfinite, record_samples=record_samples,
            record_texts=record_texts)
        last_report = time.perf_counter()
        side_path, side_line_of = side_sink or (None, None)
        with sink.open("a") as out, (side_path.open("a") if side_path else contextlib.nullcontext()) as side:
            while True:
                finished, progress = ray.get(driver.step.remote(config.driver.step_s))
                if side is not None:
                    _append_lines(side, map(side_line_of, finished))
                _append_lines(out, map(line_of, finished))
                if progress["done"] or time.perf_counter() - last_report >= config.driver.progress_interval_s:
                    log.info(_progress_line(progress, resumed))
                    last_report = time.perf_counter()
                if progress["done"]:
                    return progress
    finally:
        if started_ray:
            ray.shutdown()


def _append_lines(out, lines) -> None:
    text = "".join(json.dumps(line) + "\n" for line in lines if line is not None)
    if text:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


def collect(config: RunConfig, num_states: int, completions: int, bank_path: Path, texts_path: Path | None = None) -> int:
    """``slg collect``: per prompt, ``num_states`` states and ``completions`` scored rollouts from
    each, appended to a reward bank (SPEC.md format) as each prompt finishes; with ``texts_path``,
    the state and response texts in a side file of the same shape (one line per prompt). Rerunning
    with the same bank continues where it stopped: prompts already in it are skipped, a torn last
    line dropped, and side lines of prompts the bank does not have are dropped."""
    if num_states < 1 or completions < 1:
        raise ValueError(f"--states and --completions must be >= 1, got {num_states} and {completions}")
    if texts_path is not None and texts_path.resolve() == bank_path.resolve():
        raise ValueError(f"--texts must be another file than the bank, got {str(texts_path)!r} for both")
    prompts = load_prompts(config.data)
    bank_path.parent.mkdir(parents=True, exist_ok=True)
    done = {row["prompt_id"] for row in _read_results(bank_path)} if bank_path.exists() else set()
    if texts_path is not None:
        _keep_only_prompts(texts_path, done)
    budget = num_states * (completions + 1)
    search = replace(config.search, num_states=num_states, rollouts_per_node=completions)
    meta = {"generator": config.generator.model or f"sim:{config.generator.sim.family}",
            "reward": config.reward.model or "sim", "state_tokens": config.generator.state_tokens,
            "completions": completions, "seed": config.seed}
    log.info("collecting %d prompts x %d states x %d rollouts into %s (%d already there)",
             len(prompts), num_states, completions, bank_path, len(done))
    texts_by_id = {p.prompt_id: p.text for p in prompts}
    drive(config, prompts, ["collect"], [budget], search, {(p, "collect", budget) for p in done}, bank_path,
          lambda result: bank_row(result, meta), resumed=len(done), record_samples=True, record_texts=texts_path is not None,
          side_sink=None if texts_path is None else (texts_path, lambda r: texts_row(r, texts_by_id[r["prompt_id"]])))
    return len(prompts) - len(done)


def _state_names(samples: dict) -> list[str]:
    """A collect search's states in root-rollout order (the root's own rollouts, which only cut the
    states, are not a state)."""
    return sorted((n for n in samples if n != "root"), key=lambda n: int(n[1:]))


def bank_row(result: dict, meta: dict) -> dict | None:
    """A bank line from a collect search. None when no rollout was long enough to be a state."""
    samples = result["samples"]
    names = _state_names(samples)
    if not names:
        log.warning("prompt %s: no rollout reached the state length; nothing written", result["prompt_id"])
        return None
    row = {"prompt_id": result["prompt_id"], "states": [samples[n][0] for n in names]}
    if result.get("pass_at_n") is not None:
        row["correct"] = [samples[n][1] for n in names]
    row["meta"] = {**meta, "state_nodes": names}
    return row


def texts_row(result: dict, prompt_text: str) -> dict | None:
    """The side line of a bank line: the prompt, each state's prefix text and each rollout's whole
    response text (state prefix included), in the bank's order and shape."""
    names = _state_names(result["samples"])
    if not names:
        return None
    return {"prompt_id": result["prompt_id"], "prompt": prompt_text, "state_nodes": names,
            "state_texts": [result["state_texts"][n] for n in names],
            "responses": [result["samples"][n][2] for n in names]}


def _keep_only_prompts(path: Path, prompt_ids: set[str]) -> None:
    """Drop the lines of ``path`` whose prompt is not in ``prompt_ids`` (a kill between the side
    line and the bank line), rewriting it atomically; warn about bank prompts it lacks."""
    if not path.exists():
        rows = []
    else:
        rows = _read_results(path)
        kept = [row for row in rows if row["prompt_id"] in prompt_ids]
        if len(kept) != len(rows):
            atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
        rows = kept
    missing = len(prompt_ids - {row["prompt_id"] for row in rows})
    if missing:
        log.warning("%d prompts already in the bank have no texts in %s (collected without --texts)", missing, path)


def _progress_line(progress: dict, resumed: int) -> str:
    return (f"[{progress['elapsed_s']:7.1f} s] searches {progress['searches_done'] + resumed}/"
            f"{progress['searches_total'] + resumed}, rollouts {progress['rollouts_scored']} "
            f"({progress['rollouts_per_s']:.0f}/s), tokens {progress['tokens_generated']} "
            f"({progress['tokens_per_s']:.0f}/s)")


def prepare_output_dir(output: Path, config: RunConfig) -> list[dict]:
    """Make ``output`` ready and return the results already there (resume), after checking the
    config they came from is this one (``overwrite=true`` starts over instead)."""
    output.mkdir(parents=True, exist_ok=True)
    results_path, config_path = output / "results.jsonl", output / "config.yaml"
    new_config = config_as_dict(config)
    previous: list[dict] = []
    if results_path.exists() and config_path.exists() and not config.overwrite:
        old = OmegaConf.to_container(OmegaConf.load(config_path)) or {}
        changed = [k for k in sorted(set(_flatten(old)) | set(_flatten(new_config)))
                   if not k.startswith(RESUMABLE_KEYS) and _flatten(old).get(k) != _flatten(new_config).get(k)]
        if changed:
            raise ValueError(f"output_dir {str(output)!r} holds a run with a different config (changed: "
                             f"{', '.join(changed)}); use another output_dir or overwrite=true")
        previous = _read_results(results_path)
    elif results_path.exists() and not config.overwrite and results_path.stat().st_size > 0:
        raise ValueError(f"output_dir {str(output)!r} has results.jsonl but no config.yaml; "
                         "use another output_dir or overwrite=true")
    elif config.overwrite:
        for name in ("results.jsonl", "summary.json"):
            (output / name).unlink(missing_ok=True)
    atomic_write_text(config_path, config_as_yaml(config))
    return previous


def _read_results(path: Path) -> list[dict]:
    """The complete lines of a results file; a torn last line (a killed run) is cut off."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as handle:
            handle.truncate(len(complete))
    return [json.loads(line) for line in complete.decode().splitlines() if line.strip()]


def _flatten(tree, prefix: str = "") -> dict:
    flat = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def init_ray(config: RunConfig) -> bool:
    """Join the configured cluster ($RAY_ADDRESS or ray.address), or start a local instance; True
    when this process started Ray (and so must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ValueError(f"cannot reach a Ray cluster at {address!r} (RAY_ADDRESS / ray.address): "
                             f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        return False
    ray.init(num_cpus=config.ray.num_cpus, num_gpus=config.ray.num_gpus, include_dashboard=False, **quiet)
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes, when a host:port address has nothing listening (ray.init retries long)."""
    import socket

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: ray.init resolves them and fails fast itself
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ValueError(f"cannot reach a Ray cluster at {address!r} (RAY_ADDRESS / ray.address): {error}") from None


def is_single_node() -> bool:
    import ray

    return len([n for n in ray.nodes() if n.get("Alive")]) == 1


def create_replicas(config: RunConfig, local: bool, reward_cls=None):
    """Generator and reward actors as configured (``reward_cls``: another reward class, for
    benchmarks). On a fixed local instance, a request for more GPUs than it has is an error (Ray
    would wait for them forever); a cluster may autoscale to them."""
    import ray

    from pipeline.replicas import create_ray_replicas

    gen, rm = config.generator, config.reward
    gen_cls, rm_cls = load_backend("generator", gen.backend.value), reward_cls or load_backend("reward", rm.backend.value)
    real = gen.backend != Backend.sim
    gen_gpus = gen.num_gpus_per_replica if gen.num_gpus_per_replica is not None else \
        (float(gen.tensor_parallel_size) if real and gen.device != "cpu" and _has_gpus() else 0.0)
    gen_cpus = gen.num_cpus_per_replica if gen.num_cpus_per_replica is not None else (1.0 if real else 0.0)
    rm_cpus = rm.num_cpus_per_replica if rm.num_cpus_per_replica is not None else (1.0 if real else 0.0)
    needed = gen_gpus * gen.num_replicas + rm.num_gpus_per_replica * rm.num_replicas
    available = ray.cluster_resources().get("GPU", 0)
    if needed > available:
        message = f"the run needs {needed:g} GPUs, the {'local Ray instance' if local else 'cluster'} has {available:g}"
        if local:
            raise ValueError(message + " (generator/reward num_replicas and num_gpus_per_replica)")
        log.warning("%s: waiting for the autoscaler", message)
    generators = create_ray_replicas(gen_cls, gen.num_replicas, generator_kwargs(config), gen_gpus, gen_cpus,
                                     gpus_per_replica_group=gen.tensor_parallel_size if gen_gpus >= 1 else 1,
                                     name="generator", max_restarts=gen.max_restarts)
    rewards = create_ray_replicas(rm_cls, rm.num_replicas, reward_kwargs(config), rm.num_gpus_per_replica, rm_cpus,
                                  name="reward", max_restarts=rm.max_restarts)
    return generators, rewards


def _has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def generator_kwargs(config: RunConfig) -> dict:
    section = config_as_dict(config)["generator"]
    if config.generator.backend == Backend.sim:
        sim = section["sim"]
        return {"family": sim["family"], "params": sim["params"], "state_tokens": section["state_tokens"],
                "mean_response_tokens": sim["mean_response_tokens"],
                "short_rollout_fraction": sim["short_rollout_fraction"],
                "latency_per_token_s": sim["latency_per_token_s"]}
    section.pop("sim")
    return {"settings": _absolute_model_path(section)}


def reward_kwargs(config: RunConfig) -> dict:
    if config.reward.backend == Backend.sim:
        return {"latency_per_item_s": config.generator.sim.rm_latency_per_item_s}
    return {"settings": _absolute_model_path(config_as_dict(config)["reward"])}


def _absolute_model_path(section: dict) -> dict:
    """A local model folder as an absolute path: actors need not share this process's working dir."""
    model = section.get("model")
    if model and os.path.isdir(os.path.expanduser(model)):
        section["model"] = os.path.abspath(os.path.expanduser(model))
    return section


def world_of(config: RunConfig):
    if config.generator.backend != Backend.sim:
        return None
    from pipeline.worlds import make_world

    return make_world(config.generator.sim.family, **config.generator.sim.params)
