"""How the driver calls replicas: in-process objects or Ray actors, behind one submit/wait pair.

The driver submits a batch to a replica and later collects whichever calls have finished; it does
not care whether a replica is a Ray actor on a GPU node or a plain object in the same process.
``LocalCalls`` runs calls synchronously (tests, the in-process reference run); ``RayCalls`` calls
actor methods and waits with ``ray.wait``. Placement (GPUs and CPUs per replica, placement groups
for tensor parallelism) is :func:`create_ray_replicas`, driven by config.
"""

from __future__ import annotations

import itertools
from typing import Any


class LocalCalls:
    """Plain objects called synchronously; every call is finished when ``wait`` is asked."""

    def __init__(self):
        self._done: dict[int, tuple[Any, BaseException | None]] = {}
        self._tokens = itertools.count()

    def submit(self, replica: Any, method: str, batch: list) -> int:
        token = next(self._tokens)
        try:
            self._done[token] = (getattr(replica, method)(batch), None)
        except Exception as error:  # handed to the driver, which decides what a failure means
            self._done[token] = (None, error)
        return token

    def wait(self, tokens: list, timeout_s: float) -> list[tuple[Any, Any, BaseException | None]]:
        return [(token, *self._done.pop(token)) for token in tokens if token in self._done]

    def classify_failure(self, error: BaseException) -> str:
        return "error"  # an in-process object has no process to lose: every error is the code's

    def restart(self, replica: Any) -> None:
        pass


class RayCalls:
    """Actor method calls; ``wait`` returns the finished ones (at least one unless it timed out)."""

    def __init__(self):
        import ray

        self._ray = ray

    def submit(self, replica: Any, method: str, batch: list):
        return getattr(replica, method).remote(batch)

    def wait(self, tokens: list, timeout_s: float):
        if not tokens:
            return []
        ready, _ = self._ray.wait(tokens, num_returns=1, timeout=timeout_s)
        if ready:
            ready, _ = self._ray.wait(tokens, num_returns=len(tokens), timeout=0)
        out = []
        for ref in ready:
            try:
                out.append((ref, self._ray.get(ref), None))
            except Exception as error:  # RayTaskError, ActorDiedError: the driver decides
                out.append((ref, None, error))
        return out

    def classify_failure(self, error: BaseException) -> str:
        """"died" (the replica's process is gone: re-send its work), "restarting" (Ray is bringing
        it back: re-send, wait), or "error" (its code raised: re-sending would fail the same way)."""
        from ray import exceptions

        if isinstance(error, exceptions.ActorUnavailableError):
            return "restarting"
        if isinstance(error, exceptions.RayActorError):
            return "died"
        return "error"

    def restart(self, replica: Any) -> None:
        """Kill a hung replica; Ray restarts it (``max_restarts``) and its pending calls fail."""
        self._ray.kill(replica, no_restart=False)


def create_ray_replicas(cls, count: int, kwargs: dict, num_gpus: float, num_cpus: float,
                        gpus_per_replica_group: int = 1, name: str = "replica", max_restarts: int = 3) -> list:
    """``count`` actors of ``cls``, each asking Ray for ``num_gpus`` and ``num_cpus``.

    A replica that needs several GPUs (tensor parallelism) gets its own placement group of that
    many GPU bundles, strictly packed on one node; the engine's workers run inside it.
    """
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    remote_cls = ray.remote(cls)
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
