"""How the driver calls replicas: in-process objects or Ray actors, behind one submit/wait pair.

The driver submits a batch to a replica and later collects whichever calls have finished; it does
not care whether a replica is a Ray actor on a GPU node or a plain object in the same process.
``LocalCalls`` runs calls synchronously (tests, the in-process reference run); ``RayCalls`` calls
actor methods and waits with ``ray.wait``. :func:`in_process` lets synchronous code (tests, the
bench's bare engine) call a replica whose methods are coroutines (the vLLM generator's async actor).
:func:`with_packed_calls` gives a replica class the twins of its methods that ``RayCalls`` calls
with one pickled batch. Placing the replicas is ``pipeline.distributed.session``'s job."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import pickle
from enum import Enum
from typing import Any


class CallFailure(str, Enum):
    died = "died"              # the replica's process is gone: re-send its work elsewhere
    restarting = "restarting"  # Ray is bringing the replica back: re-send its work, wait for it
    error = "error"            # the replica's code raised: re-sending would fail the same way
    hung = "hung"              # no answer in time: the replica is killed, Ray restarts it


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

    def classify_failure(self, error: BaseException) -> CallFailure:
        return CallFailure.error  # an in-process object has no process to lose: every error is the code's

    def restart(self, replica: Any) -> None:
        pass


class RayCalls:
    """Actor method calls; ``wait`` returns the finished ones (at least one unless it timed out).

    Holds nothing (Ray is imported where it is used), so it travels to the driver actor as it is."""

    @property
    def _ray(self):
        import ray

        return ray

    def submit(self, replica: Any, method: str, batch: list):
        twin = getattr(replica, method + PACKED, None)  # replicas placed by the session have one
        if twin is None:
            return getattr(replica, method).remote(batch)
        return twin.remote(pack(batch))

    def wait(self, tokens: list, timeout_s: float):
        if not tokens:
            return []
        ready, _ = self._ray.wait(tokens, num_returns=1, timeout=timeout_s)
        if ready:
            ready, _ = self._ray.wait(tokens, num_returns=len(tokens), timeout=0)
        out = []
        for ref in ready:
            try:
                answers = self._ray.get(ref)
                # a twin's answer is one pickled batch; a plain method's, the batch itself (a list)
                out.append((ref, pickle.loads(answers) if isinstance(answers, bytes) else answers, None))
            except Exception as error:  # RayTaskError, ActorDiedError: the driver decides
                out.append((ref, None, error))
        return out

    def classify_failure(self, error: BaseException) -> CallFailure:
        from ray import exceptions

        if isinstance(error, exceptions.ActorUnavailableError):
            return CallFailure.restarting
        if isinstance(error, exceptions.RayActorError):
            return CallFailure.died
        return CallFailure.error

    def restart(self, replica: Any) -> None:
        """Kill a hung replica; Ray restarts it (``max_restarts``) and its pending calls fail."""
        self._ray.kill(replica, no_restart=False)


PACKED = "_packed"  # suffix of a replica method's twin that takes and returns one pickled batch
REPLICA_METHODS = ("generate", "score")


def with_packed_calls(cls: type) -> type:
    """``cls`` with a twin of each replica method (``generate_packed`` for ``generate``...), async
    where the method is: it takes its batch as one pickle and returns its answers as one. Ray's own
    serializer calls a Python hook for every object of a list (about 4 us a request or answer on a
    2-core machine, paid by the driver for each); the C pickler packs a whole batch at about 1 us
    an item. The class keeps its name, so Ray's logs and dashboard still show it."""
    twins: dict[str, Any] = {}
    for name in REPLICA_METHODS:
        method = getattr(cls, name, None)
        if method is None:
            continue
        if inspect.iscoroutinefunction(method):
            async def twin(self, payload: bytes, _name=name) -> bytes:
                return pack(await getattr(self, _name)(pickle.loads(payload)))
        else:
            def twin(self, payload: bytes, _name=name) -> bytes:
                return pack(getattr(self, _name)(pickle.loads(payload)))
        twins[name + PACKED] = twin
    return type(cls.__name__, (cls,), {**twins, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})


def pack(batch: list) -> bytes:
    """A batch as one pickle: the C pickler's, or cloudpickle's where a backend's answers hold what
    plain pickle refuses (a lambda, a class defined in a function); ``pickle.loads`` reads both."""
    try:
        return pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        from ray import cloudpickle

        return cloudpickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)


def in_process(replica):
    """``replica`` callable from synchronous code (tests, a bench's bare engine): an async actor's
    coroutine methods become blocking calls; a replica without any comes back as it is."""
    if not any(inspect.iscoroutinefunction(member) for _, member in inspect.getmembers(type(replica))):
        return replica
    return InProcess(replica)


class InProcess:
    """An async replica run on one private event loop, the same for every call: an engine's own
    background tasks (vLLM's output handler) live on the loop that first used it, so a fresh loop
    per call (``asyncio.run``) would strand them."""

    def __init__(self, replica):
        self.replica = replica
        self.loop = asyncio.new_event_loop()

    def __getattr__(self, name: str):
        member = getattr(self.replica, name)
        if not inspect.iscoroutinefunction(member):
            return member
        return lambda *args, **kwargs: self.run(member(*args, **kwargs))

    def run(self, awaitable):
        """Run ``awaitable`` (several calls at once: ``asyncio.gather`` inside an ``async def``) to its end."""
        return self.loop.run_until_complete(awaitable)

    def close(self) -> None:
        if hasattr(self.replica, "close"):
            self.replica.close()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:  # the engine's background tasks: let them see their cancellation
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.wait(pending))
        self.loop.close()
