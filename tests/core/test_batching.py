"""The vLLM generator's own logic, without vLLM: its calls on a stand-in for ``AsyncLLM``
(concurrent calls share one engine, each gets exactly its own outputs in order, an engine failure
fails every waiting call instead of hanging it, a refused input fails its call alone and aborts
that call's other requests, grading runs off the event loop), the synchronous wrapper for
in-process use, and the engine options built from config."""

import asyncio
import threading

import pytest

from actors.vllm_engine import VLLMGenerator, _engine_options
from pipeline.distributed.calls import InProcess, in_process


class EngineDeadError(RuntimeError):
    pass


class FakeAsyncEngine:
    """``generate`` like ``AsyncLLM.generate`` with FINAL_ONLY outputs: a request runs for ``params``
    ticks of the event loop, then yields one output. Records what ran together and what was aborted."""

    def __init__(self):
        self.running: set[str] = set()
        self.most_running = 0
        self.aborted: list[str] = []
        self.dead: BaseException | None = None

    @property
    def errored(self) -> bool:
        return self.dead is not None

    async def generate(self, prompt, params, request_id):
        if self.dead is not None:
            raise self.dead
        if prompt.startswith("too-long"):
            raise ValueError("prompt longer than max_model_len")
        self.running.add(prompt)
        self.most_running = max(self.most_running, len(self.running))
        try:
            for _ in range(params):
                await asyncio.sleep(0)
                if self.dead is not None:
                    raise self.dead
        except asyncio.CancelledError:
            self.aborted.append(prompt)
            raise
        finally:
            self.running.discard(prompt)
        yield f"out:{prompt}"


class FakeGenerator(VLLMGenerator):
    """The real ``generate`` over the fake engine: a request's prompt is its text, its sampling
    parameters the ticks it takes; a rollout records the thread that graded it."""

    def __init__(self, engine):
        import itertools
        from concurrent.futures import ThreadPoolExecutor

        self.engine = engine
        self.grading = ThreadPoolExecutor(2, thread_name_prefix="grading")
        self._request_ids = itertools.count()

    def engine_inputs(self, requests):
        return [prompt for prompt, _ in requests], [ticks for _, ticks in requests]

    def _rollout(self, request, output):
        return output, threading.current_thread().name


def run(generator_calls):
    async def together():  # a hang fails the test instead of stalling the suite
        return await asyncio.wait_for(asyncio.gather(*generator_calls, return_exceptions=True), timeout=10)

    return asyncio.run(together())


def test_concurrent_calls_share_the_engine_and_get_their_own_outputs_in_order():
    engine = FakeAsyncEngine()
    generator = FakeGenerator(engine)
    calls = [[(f"c{c}-{k}", 1 + (k * 7 + c) % 5) for k in range(5 + c)] for c in range(6)]
    results = run([generator.generate(call) for call in calls])
    assert [[output for output, _ in result] for result in results] == [[f"out:{p}" for p, _ in call] for call in calls]
    assert engine.most_running > 10  # several calls were in the engine together, not one after another
    assert {thread for result in results for _, thread in result} <= {"grading_0", "grading_1"}  # never the loop's
    assert run([generator.generate([])]) == [[]]


def test_an_engine_failure_fails_every_waiting_call_and_does_not_hang():
    engine = FakeAsyncEngine()
    generator = FakeGenerator(engine)

    async def kill_engine():
        for _ in range(3):
            await asyncio.sleep(0)
        engine.dead = EngineDeadError("engine core died")

    results = run([generator.generate([(f"c{c}-{k}", 50) for k in range(6)]) for c in range(3)] + [kill_engine()])
    assert [str(error) for error in results[:3]] == ["engine core died"] * 3
    assert not engine.running
    with pytest.raises(EngineDeadError, match="engine core died"):  # later calls fail the same way
        asyncio.run(generator.generate([("late", 1)]))


def test_a_refused_input_fails_its_call_alone_and_aborts_that_calls_other_requests():
    engine = FakeAsyncEngine()
    generator = FakeGenerator(engine)

    async def refused_call():
        try:
            await generator.generate([("slow", 1000), ("too-long", 1)])
        finally:
            await asyncio.sleep(0)  # the aborted request sees its cancellation
            seen.update(aborted=list(engine.aborted), running=set(engine.running))

    seen = {}
    good, bad = run([generator.generate([(f"g{k}", 20) for k in range(8)]), refused_call()])
    assert [output for output, _ in good] == [f"out:g{k}" for k in range(8)]
    assert isinstance(bad, ValueError) and str(bad) == "prompt longer than max_model_len"
    assert seen["aborted"] == ["slow"]  # at once, not left running for its 1000 ticks
    assert all(request.startswith("g") for request in seen["running"])


class AsyncReplica:
    def __init__(self):
        self.loops, self.closed = set(), False

    async def work(self, value):
        self.loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0)
        return value * 2

    def name(self):
        return "replica"

    def close(self):
        self.closed = True


def test_in_process_runs_every_call_on_one_loop_and_leaves_sync_replicas_alone():
    replica = AsyncReplica()
    wrapped = in_process(replica)
    assert isinstance(wrapped, InProcess)
    assert wrapped.work(2) == 4 and wrapped.work(5) == 10 and wrapped.name() == "replica"

    async def both():
        return await asyncio.gather(replica.work(1), replica.work(3))

    assert wrapped.run(both()) == [2, 6]
    assert len(replica.loops) == 1  # an engine's background task started by the first call keeps running
    wrapped.close()
    assert replica.closed and wrapped.loop.is_closed()
    plain = SyncReplica()
    assert in_process(plain) is plain


class SyncReplica:
    def generate(self, requests):
        return requests


def test_engine_options_pass_block_size_to_both_engines_and_caching_to_the_generator():
    settings = {"model": "m", "block_size": 32, "enable_prefix_caching": True, "tensor_parallel_size": 2}
    generator, reward = _engine_options(settings, pooling=False), _engine_options(settings, pooling=True)
    assert generator["block_size"] == reward["block_size"] == 32
    assert generator["distributed_executor_backend"] == "ray" and "runner" not in generator
    assert reward["runner"] == "pooling" and "tensor_parallel_size" not in reward
    assert "block_size" not in _engine_options({"model": "m"}, pooling=True)  # the engine's default


def test_chunked_prefill_is_off_for_the_cpu_generator_only():
    """The CPU build cannot rewind a seeded request's generator after a cut prefill (test_vllm)."""
    assert _engine_options({"model": "m"}, pooling=False, on_cpu=True)["enable_chunked_prefill"] is False
    assert "enable_chunked_prefill" not in _engine_options({"model": "m"}, pooling=False, on_cpu=False)
    assert "enable_chunked_prefill" not in _engine_options({"model": "m"}, pooling=True, on_cpu=True)
