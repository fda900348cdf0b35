"""The vLLM replicas' own logic, without vLLM: the continuous batcher on a stand-in engine
(concurrent calls share one engine loop, each gets exactly its own outputs in order, an engine
failure fails the waiting calls instead of hanging them) and the engine options built from config."""

import itertools
import threading
from dataclasses import dataclass

import pytest

from actors.vllm_engine import ContinuousBatcher, _engine_options


@dataclass
class FakeOutput:
    request_id: str
    prompt: str
    finished: bool = True


class FakeLLM:
    """``enqueue`` + ``llm_engine.step`` like vLLM's: each step finishes up to ``per_step`` requests,
    newest first (so outputs come back out of order), and records how many were running together."""

    def __init__(self, per_step: int = 3, fail_after_steps: int | None = None):
        self.running: list[tuple[str, str]] = []
        self.ids = itertools.count()
        self.per_step, self.fail_after_steps = per_step, fail_after_steps
        self.steps = 0
        self.most_running = 0
        self.llm_engine = self
        self.lock = threading.Lock()  # proves a single thread drives the engine: never contended

    def enqueue(self, prompts, params, use_tqdm=False):
        assert self.lock.acquire(blocking=False)
        try:
            if any(p.startswith("too-long") for p in prompts):
                raise ValueError("prompt longer than max_model_len")
            ids = [str(next(self.ids)) for _ in prompts]
            self.running += list(zip(ids, prompts))
            return [f"{i}-a1b2c3d4" for i in ids]  # vLLM answers with internal ids, outputs carry the external ones
        finally:
            self.lock.release()

    def step(self):
        assert self.lock.acquire(blocking=False)
        try:
            self.steps += 1
            if self.fail_after_steps is not None and self.steps > self.fail_after_steps:
                raise RuntimeError("engine core died")
            self.most_running = max(self.most_running, len(self.running))
            done, self.running = self.running[-self.per_step:], self.running[:-self.per_step]
            return [FakeOutput(i, p) for i, p in reversed(done)] + [FakeOutput(i, p, False) for i, p in self.running[:1]]
        finally:
            self.lock.release()


def test_concurrent_calls_get_their_own_outputs_in_order_from_one_shared_batch():
    llm = FakeLLM()
    batcher = ContinuousBatcher(llm)
    results, gate = {}, threading.Barrier(6)

    def call(caller: int):
        prompts = [f"c{caller}-{k}" for k in range(5 + caller)]
        gate.wait()
        results[caller] = [o.prompt for o in batcher.generate(prompts, [None] * len(prompts))]

    threads = [threading.Thread(target=call, args=(c,)) for c in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == {c: [f"c{c}-{k}" for k in range(5 + c)] for c in range(6)}
    assert llm.most_running > 10  # several calls were in the engine together, not one after another
    assert batcher.generate(["again"], [None])[0].prompt == "again"  # idle loop wakes for a new call


def test_an_engine_failure_fails_every_waiting_call_and_does_not_hang():
    batcher = ContinuousBatcher(FakeLLM(per_step=1, fail_after_steps=2))
    errors = []

    def call():
        try:
            batcher.generate([f"p{k}" for k in range(6)], [None] * 6)
        except RuntimeError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == ["engine core died"] * 3
    with pytest.raises(RuntimeError, match="engine core died"):  # later calls fail the same way
        batcher.generate(["late"], [None])


def test_a_refused_call_fails_alone_and_the_others_finish():
    batcher = ContinuousBatcher(FakeLLM(per_step=1))
    results, errors = {}, {}

    def call(name, prompts):
        try:
            results[name] = [o.prompt for o in batcher.generate(prompts, [None] * len(prompts))]
        except ValueError as error:
            errors[name] = str(error)

    threads = [threading.Thread(target=call, args=("good", [f"g{k}" for k in range(8)])),
               threading.Thread(target=call, args=("bad", ["ok", "too-long"]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == {"good": [f"g{k}" for k in range(8)]}
    assert errors == {"bad": "prompt longer than max_model_len"}
    assert batcher.generate([], []) == []  # nothing to wait for


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
