"""A Ray session for one job (``slg run``, ``collect`` or ``bench``): Ray, replicas, the driver actor.

It starts a local Ray instance in-process or joins a cluster ($RAY_ADDRESS or ``ray.address``),
places the generator and reward replicas as configured (GPUs and CPUs per replica, a placement group
per tensor-parallel replica), starts the driver as an actor beside them, and steps it until its
searches are done, handing each batch of finished results to the job. What the searches are and
where results go is the job's business (``pipeline.jobs``). ``config`` is the job's ``RunConfig``:
this module reads its engine sections (``pipeline.distributed.config``) and its seed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from pipeline import signals
from pipeline.distributed.backends import load_backend
from pipeline.distributed.calls import RayCalls, with_packed_calls
from pipeline.distributed.config import Backend, NonFinite, as_plain_dict
from pipeline.distributed.reaper import child_processes, close_reaper, start_reaper
from pipeline.errors import ConfigError

log = logging.getLogger("slg")


class DriverLostError(RuntimeError):
    """The driver actor died (its process, or the node it ran on): rerunning the command resumes."""


class Session:
    """``with Session(config) as session``: Ray for the job's lifetime; stopped at exit only if started here."""

    def __init__(self, config, reward_backend: str | None = None):
        self.config = config
        self.reward_backend = reward_backend or config.reward.backend.value  # bench --free-rm: "free"
        self.started_ray = False
        self.fixed_resources = False  # set on entering: see __enter__
        self.generators: list = []
        self.rewards: list = []
        self.driver = None
        self.reaper = None

    def __enter__(self) -> Session:
        import ray

        before = child_processes()
        joined_in_process = ray.is_initialized()  # a caller's own instance (a test, a notebook)
        self.started_ray = start_ray(self.config.ray.address, self.config.ray.num_cpus, self.config.ray.num_gpus)
        # Resources that no autoscaler will add: an instance started here, or a one-node instance the
        # caller started in this process. A cluster joined by address (`ray job submit`, `ray up`
        # with min_workers 0) may grow, even from its head alone: a run there waits for it.
        self.fixed_resources = self.started_ray or (joined_in_process and is_single_node())
        if self.started_ray:  # whatever way this process ends, nothing of the instance outlives it long
            self.reaper = start_reaper(child_processes() - before)
        return self

    def __exit__(self, *exc) -> None:
        if self.started_ray:
            import ray

            ray.shutdown()
            close_reaper(self.reaper)

    def place_replicas(self) -> None:
        self.generators, self.rewards = create_replicas(self.config, self.reward_backend, local=self.fixed_resources)

    def wait_until_engines_are_up(self) -> None:
        """Block until every replica has started its engine (benchmarks start their clock after)."""
        import ray

        ray.get([g.generate.remote([]) for g in self.generators] + [r.score.remote([]) for r in self.rewards])

    def start_driver(self, searches: list, observer=None, in_order_window: int | None = None, seed: int | None = None):
        """The driver actor of ``searches``; ``seed``: the run's seed, ``config.seed`` unless given."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from pipeline.distributed.driver import DriverActor

        if not self.generators:
            self.place_replicas()
        config = self.config
        # On this process's node: losing a worker node loses replicas, never the driver and its searches.
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.driver = ray.remote(num_cpus=0, max_restarts=0)(DriverActor).options(scheduling_strategy=here).remote(
            searches, self.generators, self.rewards, config.driver, config.seed if seed is None else seed, RayCalls(),
            drop_nonfinite=config.reward.nonfinite == NonFinite.drop, ground_truth=ground_truth_of(config),
            observer=observer, answers_vote=config.generator.backend != Backend.sim, in_order_window=in_order_window)
        return self.driver

    def drive(self, on_finished: Callable[[list[dict]], Any], resumed: int = 0) -> dict:
        """Step the driver until done; ``on_finished`` gets each step's finished results. A progress
        line every ``driver.progress_interval_s``. Returns the final progress."""
        import ray

        settings = self.config.driver
        last_report, replicas = time.perf_counter(), None
        while True:
            try:
                finished, progress = ray.get(self.driver.step.remote(settings.step_s))
            except ray.exceptions.RayActorError as error:
                raise DriverLostError("the driver actor was lost (its process or its node died); rerun the same "
                                      "command to resume from the results written so far") from error
            on_finished(finished)
            if progress["done"] or time.perf_counter() - last_report >= settings.progress_interval_s:
                log.info(progress_line(progress, resumed))
                last_report = time.perf_counter()
            if replicas is not None and replica_line(progress) != replicas:
                log.warning(replica_line(progress))
            replicas = replica_line(progress)
            if progress["done"]:
                return progress


def progress_line(progress: dict, resumed: int = 0) -> str:
    return (f"[{progress['elapsed_s']:7.1f} s] searches {progress['searches_done'] + resumed}/"
            f"{progress['searches_total'] + resumed}, rollouts {progress['rollouts_scored']} "
            f"({progress['rollouts_per_s']:.0f}/s), tokens {progress['tokens_generated']} "
            f"({progress['tokens_per_s']:.0f}/s)")


def replica_line(progress: dict) -> str:
    retired = progress["replicas_retired"]
    return (f"replicas: {progress['replicas_lost']} lost, {progress['replicas_rejoined']} back at work after a "
            f"failure, {retired['generator']} generator and {retired['reward']} reward retired")


def start_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), or start a local instance with these
    resources; True when this process started Ray. Either way, SIGTERM stays the job's to handle
    (``pipeline.signals.ray_starting``): ``ray.init`` installs handlers of its own."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    # Replica and engine logs stay in Ray's session logs; what the user needs of them (progress,
    # replicas lost and retired, the one-line error) is logged here, from the progress the driver reports.
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        _check_reachable(address)
        try:
            with signals.ray_starting():
                ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ConfigError(f"cannot reach a Ray cluster at {address!r} (RAY_ADDRESS / ray.address): "
                              f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        return False
    # address="local": a new instance of our own. With no address, ray.init joins the last cluster
    # `ray start` left on this machine (someone else's, or another test run's) and then refuses num_cpus.
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice.addFilter(_drop_token_auth_notice)
    try:
        with signals.ray_starting():
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **quiet)
    finally:
        notice.removeFilter(_drop_token_auth_notice)
    return True


def _drop_token_auth_notice(record: logging.LogRecord) -> bool:
    """Ray (2.60 here) warns on every new local instance that it enabled token authentication, and how
    to opt out. The instance is this job's own and ends with it, so the notice says nothing a user
    can act on; authentication stays on, only the warning goes."""
    return not record.getMessage().startswith("Token authentication is enabled")


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes, when a host:port address has nothing listening (ray.init retries long)."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: ray.init resolves them and fails fast itself
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ConfigError(f"cannot reach a Ray cluster at {address!r} (RAY_ADDRESS / ray.address): {error}") from None


def is_single_node() -> bool:
    import ray

    return len([n for n in ray.nodes() if n.get("Alive")]) == 1


def create_replicas(config, reward_backend: str, local: bool) -> tuple[list, list]:
    """Generator and reward actors as configured. On a fixed local instance, a request for more GPUs
    or CPUs than it has is an error (Ray would wait for them forever); a cluster may autoscale to them."""
    import ray

    gen, rm = config.generator, config.reward
    real = gen.backend != Backend.sim
    gen_gpus = gen.num_gpus_per_replica if gen.num_gpus_per_replica is not None else \
        (float(gen.tensor_parallel_size) if real and gen.device != "cpu" and ray.cluster_resources().get("GPU", 0) else 0.0)
    gen_cpus = gen.num_cpus_per_replica if gen.num_cpus_per_replica is not None else (1.0 if real else 0.0)
    rm_cpus = rm.num_cpus_per_replica if rm.num_cpus_per_replica is not None else (1.0 if real else 0.0)
    group_size = gen.tensor_parallel_size if gen_gpus >= 1 else 1
    # a grouped replica's CPUs come out of its placement group's bundles (one CPU per GPU)
    gen_cpus_held = max(gen_cpus, group_size) if group_size > 1 else gen_cpus
    for resource, needed in (("GPU", gen_gpus * gen.num_replicas + rm.num_gpus_per_replica * rm.num_replicas),
                             ("CPU", gen_cpus_held * gen.num_replicas + rm_cpus * rm.num_replicas)):
        available = ray.cluster_resources().get(resource, 0)
        if needed > available:
            where = "local Ray instance" if local else "cluster"
            message = f"the run needs {needed:g} {resource}s, the {where} has {available:g}"
            if local:
                raise ConfigError(message + f" (generator/reward num_replicas and num_{resource.lower()}s_per_replica"
                                  + (", ray.num_cpus)" if resource == "CPU" else ")"))
            log.warning("%s: waiting for the autoscaler", message)
    generators = create_ray_replicas(load_backend("generator", gen.backend.value), gen.num_replicas,
                                     generator_kwargs(config), gen_gpus, gen_cpus,
                                     gpus_per_replica_group=group_size,
                                     name="generator", max_restarts=gen.max_restarts)
    rewards = create_ray_replicas(load_backend("reward", reward_backend), rm.num_replicas, reward_kwargs(config),
                                  rm.num_gpus_per_replica, rm_cpus, name="reward", max_restarts=rm.max_restarts)
    return generators, rewards


def create_ray_replicas(cls, count: int, kwargs: dict, num_gpus: float, num_cpus: float,
                        gpus_per_replica_group: int = 1, name: str = "replica", max_restarts: int = 3) -> list:
    """``count`` actors of ``cls``, each asking Ray for ``num_gpus`` and ``num_cpus``.

    A replica that needs several GPUs (tensor parallelism) gets its own placement group of that
    many GPU bundles, strictly packed on one node; the engine's workers run inside it.
    """
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    remote_cls = ray.remote(with_packed_calls(cls))  # the driver sends and receives each batch as one pickle
    handles = []
    for index in range(count):
        # Ray restarts a dead replica; the driver re-sends its work (max_task_retries=0: not Ray).
        options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": max_restarts,
                                   "max_task_retries": 0,
                                   # a class that serves concurrent calls says how many (vLLM: one engine batch)
                                   "max_concurrency": getattr(cls, "max_concurrency", 1)}
        if gpus_per_replica_group > 1:
            group = placement_group([{"GPU": 1, "CPU": 1}] * gpus_per_replica_group, strategy="STRICT_PACK",
                                    name=f"{name}-{index}")
            ray.get(group.ready())
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_capture_child_tasks=True)
            options["num_gpus"] = 0  # the engine's own workers take the group's GPUs
        handles.append(remote_cls.options(**options).remote(**kwargs))
    return handles


def generator_kwargs(config) -> dict:
    section = as_plain_dict(config.generator)
    if config.generator.backend == Backend.sim:
        sim = section["sim"]
        return {"family": sim["family"], "params": sim["params"], "state_tokens": section["state_tokens"],
                "mean_response_tokens": sim["mean_response_tokens"],
                "short_rollout_fraction": sim["short_rollout_fraction"],
                "latency_per_token_s": sim["latency_per_token_s"]}
    section.pop("sim")
    return {"settings": _absolute_model_path(section)}


def reward_kwargs(config) -> dict:
    if config.reward.backend == Backend.sim:
        sim = as_plain_dict(config.generator.sim)
        return {"family": sim["family"], "params": sim["params"], "latency_per_item_s": sim["rm_latency_per_item_s"],
                "state_tokens": config.generator.state_tokens, "mean_response_tokens": sim["mean_response_tokens"],
                "short_rollout_fraction": sim["short_rollout_fraction"]}
    return {"settings": _absolute_model_path(as_plain_dict(config.reward))}


def ground_truth_of(config):
    """Exact node values for the ``oracle`` method: only a simulated backend has them."""
    if config.generator.backend != Backend.sim:
        return None
    sim = config.generator.sim
    return load_backend("ground_truth", "sim")(family=sim.family, params=dict(sim.params))


def _absolute_model_path(section: dict) -> dict:
    """A local model folder as an absolute path: actors need not share this process's working dir."""
    model = section.get("model")
    if model and os.path.isdir(os.path.expanduser(model)):
        section["model"] = os.path.abspath(os.path.expanduser(model))
    return section
