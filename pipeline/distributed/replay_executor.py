"""Replay's tasks as Ray tasks: on a local instance started here, or on the cluster in $RAY_ADDRESS.

The tasks are ``pipeline.offline.replay_tasks``'s plain functions; this module only places them. On
one machine, a task reads its slice of a bank's files itself; on a cluster of several, this process
reads each chunk and puts it in the object store once (``share``), where every task of the chunk
reads it. At most ``2 x CPUs`` tasks are out at a time and tasks are drawn from the replay's stream
only as room frees, so neither this process nor the object store ever holds more than the chunks
of the tasks in flight. Results come back as tasks finish; the replay orders them itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pipeline.distributed.reaper import child_processes, close_reaper, start_reaper
from pipeline.offline.replay_tasks import Task

TASKS_PER_CPU = 2  # tasks in flight per CPU of the cluster: one running, one ready


class RayExecutor:
    """Runs tasks as Ray tasks; ``workers`` CPUs for a local instance started here (None: all)."""

    def __init__(self, workers: int | None = None):
        import ray

        from pipeline.distributed.session import is_single_node, start_ray

        before = child_processes()
        self.started = start_ray(num_cpus=workers)
        self.reaper = start_reaper(child_processes() - before) if self.started else None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_in_flight = TASKS_PER_CPU * max(1, min(cpus, workers or cpus))
        # one machine: the tasks read a bank's files themselves, in parallel; across machines they
        # may not see them, so this process reads each chunk and puts it in the object store
        self.reads_files = is_single_node()
        self._remote: dict = {}

    def share(self, value):
        import ray

        return ray.put(value)

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[object, object]]:
        import ray

        pending: dict = {}  # object ref -> the task's meta
        stream = iter(tasks)
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.max_in_flight:
                task = next(stream, None)
                if task is None:
                    exhausted = True
                    break
                pending[self._remote_of(task.function).remote(*task.args)] = task.meta
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)

    def _remote_of(self, function):
        import ray

        if function not in self._remote:
            self._remote[function] = ray.remote(num_cpus=1)(function)
        return self._remote[function]

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            close_reaper(self.reaper)
