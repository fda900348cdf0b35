"""Backend name -> engine class, as dotted paths imported only when chosen.

This is the one place where the search core reaches the engines of ``actors``: by name, never by an
import statement, so ``actors`` depends on ``pipeline`` and not the other way round, and the CPU path
never imports vLLM.
"""

from __future__ import annotations

import importlib

from pipeline.errors import ConfigError

BACKENDS = {
    "generator": {
        "sim": "actors.sim:SimGenerator",
        "vllm": "actors.vllm_engine:VLLMGenerator",
        "hf": "actors.hf_engine:HFGenerator",
    },
    "reward": {
        "sim": "actors.sim:SimRewardModel",
        "vllm": "actors.vllm_engine:VLLMRewardModel",
        "hf": "actors.hf_engine:HFRewardModel",
        "free": "actors.sim:FreeRewardModel",  # scores at no cost: `slg bench --free-rm`
    },
    # Exact values of the states a backend produces: only simulated worlds know them (method `oracle`).
    "ground_truth": {
        "sim": "actors.sim:SimGroundTruth",
    },
}


def load_backend(kind: str, name: str):
    """The class (or function) registered as ``name`` for ``kind``; ``ConfigError`` for an unknown one."""
    table = BACKENDS[kind]
    if name not in table:
        raise ConfigError(f"unknown {kind} backend {name!r}; expected one of {sorted(table)}")
    module_name, _, attribute = table[name].partition(":")
    return getattr(importlib.import_module(module_name), attribute)
