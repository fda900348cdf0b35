"""The public real reward data shipped in ``data/real``: one pool of rewards per prompt, and its bound.

Each folder holds one published data set (its README gives source, licence and fields); a loader
turns it into per-prompt reward pools for ``slg curves --real`` and the calibration tests.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError

REAL_DATA = Path(__file__).resolve().parents[2] / "data" / "real"

REAL_SETS = {
    # folder: (loader, the largest reward the scorer can give or None)
    "genrm_gpqa_llama33_70b": ("_load_genrm", 1.0),
    "humaneval_codet_codegen16b": ("_load_humaneval", 1.0),
    "alpacaeval_bon16_tulu2_gpt4judge": ("_load_alpacaeval", None),
    "math500_bon256_llama32_1b_rlhflow_prm": ("_load_math500", 1.0),
}


def real_pools(path=REAL_DATA) -> dict[str, tuple[list[np.ndarray], float | None]]:
    """Prompt-level reward pools of the real data sets under ``path`` (the folder, or one set)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"real data folder {str(path)!r} does not exist")
    folders = [path] if path.name in REAL_SETS else [path / name for name in REAL_SETS if (path / name).is_dir()]
    if not folders:
        raise ConfigError(f"no known real data set under {str(path)!r}; expected one of {sorted(REAL_SETS)}")
    pools = {}
    for folder in folders:
        loader, bound = REAL_SETS[folder.name]
        pools[folder.name] = (globals()[loader](folder), bound)
    return pools


def _load_genrm(folder: Path) -> list[np.ndarray]:
    data = np.load(folder / "gpqa_llama33_70b_genrm.npz", allow_pickle=False)
    return list(data["score_mean"])  # p(yes) averaged over 32 verifier calls, per solution


def _load_humaneval(folder: Path) -> list[np.ndarray]:
    data = np.load(folder / "humaneval_codegen16b_exec.npz", allow_pickle=False)
    return list(data["gen_tests_frac"])  # share of generated tests passed: ~9 distinct values


def _load_alpacaeval(folder: Path) -> list[np.ndarray]:
    by_prompt: dict[str, list[float]] = {}
    with (folder / "alpacaeval_tulu2dpo13b_gpt4turbo_pref.csv").open() as handle:
        for row in csv.DictReader(handle):
            by_prompt.setdefault(row["prompt_id"], []).append(float(row["judge_logit"]))
    return [np.array(v) for v in by_prompt.values()]


def _load_math500(folder: Path) -> list[np.ndarray]:
    data = json.loads((folder / "math500_llama32_1b_rlhflow_prm_scores.json").read_text())
    problems = data if isinstance(data, list) else data.get("problems", list(data.values()))
    return [np.array(p["last_step_score"], dtype=float) for p in problems]


# --- printing and plotting -------------------------------------------------------------------

