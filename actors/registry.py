"""Backend name -> class, as dotted paths imported only when chosen (the CPU path never imports vLLM),
and :func:`in_process`, which lets synchronous code call a backend whose methods are coroutines."""

from __future__ import annotations

import asyncio
import importlib
import inspect

GENERATORS = {
    "sim": "actors.sim:SimGenerator",
    "vllm": "actors.vllm_engine:VLLMGenerator",
    "hf": "actors.hf_engine:HFGenerator",
}
REWARD_MODELS = {
    "sim": "actors.sim:SimRewardModel",
    "vllm": "actors.vllm_engine:VLLMRewardModel",
    "hf": "actors.hf_engine:HFRewardModel",
}


def load_backend(kind: str, name: str):
    """The class of backend ``name`` for ``kind`` ("generator" or "reward")."""
    table = GENERATORS if kind == "generator" else REWARD_MODELS
    if name not in table:
        raise ValueError(f"unknown {kind} backend {name!r}; expected one of {sorted(table)}")
    module_name, _, class_name = table[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


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
