"""Token ids in and out of real engines, shared by the vLLM and HF backends: how prompts and
(prompt, response) pairs become token ids, and how generated ids become a graded ``Rollout``.

Generators: the tokenizer's chat template (system prompt optional) by default, or the reference
code's raw form (problem text, an end marker, no template). Reward models: the RM tokenizer's
chat template with user = prompt and assistant = response, EOS appended if missing, scored at the
last position (docs/method.md, "The reference setup").
"""

from __future__ import annotations

from pipeline.distributed.contract import PromptInput, Rollout, RolloutRequest, StatePrefix


def prompt_token_ids(tokenizer, prompt: PromptInput, settings: dict) -> list[int]:
    if settings.get("prompt_format", "chat") == "raw":
        return list(tokenizer(prompt.text + settings.get("raw_end_marker", ""), add_special_tokens=True)["input_ids"])
    messages = []
    if settings.get("system_prompt"):
        messages.append({"role": "system", "content": settings["system_prompt"]})
    messages.append({"role": "user", "content": prompt.text})
    return _as_ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def reward_token_ids(tokenizer, prompt_text: str, response_text: str, max_length: int) -> list[int]:
    messages = [{"role": "user", "content": prompt_text}, {"role": "assistant", "content": response_text}]
    ids = _as_ids(tokenizer.apply_chat_template(messages, tokenize=True))
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    if len(ids) > max_length:  # keep the opening (template, prompt) and the closing EOS the RM reads
        ids = ids[: max_length - 1] + ids[-1:]
    return ids


def _as_ids(encoded) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    return [int(t) for t in encoded]


def new_token_limit(request: RolloutRequest, max_tokens: int) -> int:
    """The tokens a request may generate: what the response's ``max_tokens`` leaves after its state
    (or partial response so far), capped by the request's own ``max_new_tokens``."""
    left = max_tokens - (len(request.state.token_ids) if request.state else 0)
    return left if request.max_new_tokens is None else min(left, request.max_new_tokens)


def make_rollout(request: RolloutRequest, generated: list[int], tokenizer, state_tokens: int, grader,
                 finish_reason: str, num_prompt_tokens: int, num_cached_tokens: int = 0, max_tokens: int | None = None) -> Rollout:
    """A root rollout of at least ``state_tokens`` tokens offers its prefix as a state (token ids
    and text); the response text covers the state prefix too (what the RM reads); the grader, if
    any, extracts and checks the answer. A rollout that stopped at its request's ``max_new_tokens``,
    short of the response's ``max_tokens``, is a partial response (``finished`` False)."""
    state_ids = list(request.state.token_ids) if request.state else []
    finished = not (request.max_new_tokens is not None and finish_reason == "length"
                    and len(generated) >= request.max_new_tokens
                    and (max_tokens is None or len(state_ids) + len(generated) < max_tokens))
    state = None
    if request.state is None and len(generated) >= state_tokens:
        prefix = generated[:state_tokens]
        state = StatePrefix(tuple(prefix), tokenizer.decode(prefix, skip_special_tokens=True))
    text = tokenizer.decode(state_ids + generated, skip_special_tokens=True)
    answer, correct = grader.grade(text, request.prompt.answer) if grader else (None, None)
    return Rollout(request_id=request.request_id, response_text=text, token_ids=generated, finish_reason=finish_reason,
                   num_generated_tokens=len(generated), num_prompt_tokens=num_prompt_tokens,
                   num_cached_tokens=num_cached_tokens, state=state, correct=correct, answer=answer, finished=finished)
