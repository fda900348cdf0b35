"""Backend name -> class, as dotted paths imported only when chosen (the CPU path never imports vLLM)."""

from __future__ import annotations

import importlib

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
