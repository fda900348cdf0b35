"""How prompts and (prompt, response) pairs become token ids, shared by the vLLM and HF backends.

Generators: the tokenizer's chat template (system prompt optional) by default, or the reference
code's raw form (problem text, an end marker, no template). Reward models: the RM tokenizer's
chat template with user = prompt and assistant = response, EOS appended if missing, scored at the
last position (REFERENCE.md, "Reference setup").
"""

from __future__ import annotations

from actors.interfaces import PromptInput


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
