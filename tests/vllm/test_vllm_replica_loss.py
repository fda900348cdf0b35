"""A vLLM generator replica (a Ray actor on the CPU build) that is lost leaves no process behind.

The engine runs in child processes of the replica (vLLM's EngineCore, which starts its Worker).
vLLM's own parent-death watch covers only the Worker (a pipe from the EngineCore); Ray ends the
rest, because every Ray worker is its own process group and the raylet ends a dead worker's
group. Two ways to lose a replica: ``kill -9`` of the actor, and the death of its engine, after
which the replica ends itself so that Ray can restart it. Either way its waiting calls fail
(none hangs) and no process of it is left 60 s later (measured here: about 2 s after a kill -9).
Each test starts one engine (20-70 s on two cores).
"""

import os
import signal
import time

import pytest
from conftest import require

require("vllm")
psutil = require("psutil")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from actors.vllm_engine import VLLMGenerator  # noqa: E402
from pipeline.distributed.contract import PromptInput, RolloutRequest  # noqa: E402
from pipeline.toy.tiny import make_tiny_models  # noqa: E402

pytestmark = pytest.mark.vllm
PROMPT = PromptInput("p0", "A farmer has 12 sheep and buys 7 more. How many sheep does the farmer have?")


@pytest.fixture(scope="module")
def generator_model(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))["generator"]


def start_replica(ray, model):
    """A generator actor that Ray does not restart, up; its process, its EngineCore's, and every
    process under either (the replica's first, the EngineCore's second)."""
    settings = {"model": str(model), "dtype": "float32", "max_model_len": 256, "enforce_eager": True,
                "block_size": 32, "state_tokens": 32, "max_tokens": 64, "grading": "none"}
    replica = ray.remote(VLLMGenerator).options(max_restarts=0, max_concurrency=VLLMGenerator.max_concurrency)
    actor = replica.remote(settings)
    ray.get(actor.generate.remote([]), timeout=600)
    # the EngineCore's pid as vLLM 0.32 records it, not found by its "VLLM::EngineCore" title: one CI
    # run saw no process with that title (the function is inline: Ray pickles it into the replica)
    replica_pid, engine_pids = ray.get(actor.__ray_call__.remote(
        lambda self: (os.getpid(), [p.pid for p in self.engine.engine_core.resources.engine_manager.processes])))
    (engine_pid,) = engine_pids
    process, engine_core = psutil.Process(replica_pid), psutil.Process(engine_pid)
    processes = [process, engine_core] + process.children(recursive=True) + engine_core.children(recursive=True)
    return actor, list(dict.fromkeys(processes))  # psutil.Process compares by pid and start time


def describe(processes) -> str:
    """One line per process (pid, parent, title) for an assertion message."""
    return "\n".join(f"{p.pid} <- {p.ppid()}: {' '.join(p.cmdline())[:80]!r}" for p in processes if running(p))


def alive_after(processes, seconds: float) -> list:
    """The pids still running (a zombie has ended) once ``seconds`` have passed or none is left."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [p for p in processes if running(p)]
        if not alive or time.monotonic() > deadline:
            return [p.pid for p in alive if running(p)]
        time.sleep(1)


def running(process) -> bool:
    """Running and not a zombie; a process that ends while it is being asked has ended."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("lost", ["replica", "engine"])
def test_a_lost_replica_fails_its_calls_and_leaves_no_process(local_ray, generator_model, lost):
    ray = local_ray
    actor, processes = start_replica(ray, generator_model)
    replica, engine_core = processes[:2]
    assert engine_core.ppid() == replica.pid and len(processes) >= 3, describe(processes)  # and the Worker
    with pytest.raises(ray.exceptions.RayTaskError, match="VLLMValidationError"):  # a refused input: not a lost engine
        ray.get(actor.generate.remote([RolloutRequest(0, PromptInput("long", PROMPT.text * 12), None, 1)]), timeout=120)
    # ~100k tokens: seconds of work for the engine even on a fast machine, so the loss meets the calls in flight
    calls = [actor.generate.remote([RolloutRequest(i, PROMPT, None, 1000 * c + i) for i in range(512)]) for c in range(3)]
    time.sleep(1)
    os.kill((replica if lost == "replica" else engine_core).pid, signal.SIGKILL)
    for call in calls:  # a lost engine ends its replica: the same error as a killed one
        with pytest.raises(ray.exceptions.ActorDiedError):
            ray.get(call, timeout=180)
    assert alive_after(processes, 60) == []
