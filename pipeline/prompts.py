"""Where prompts come from: synthetic prompts for simulated engines, or a local JSONL file.

Every row is checked before any actor starts: a row without its problem or answer field, or with
an empty problem, is an error naming the row and the field.
"""

from __future__ import annotations

import json
from pathlib import Path

from actors.interfaces import PromptInput


def load_prompts(data) -> list[PromptInput]:
    """The prompts of a ``DataConfig``: ``num_prompts`` of them (all when 0)."""
    if data.source == "sim":
        count = data.num_prompts or 1
        return [PromptInput(f"sim{i}", f"Simulated prompt {i}") for i in range(count)]
    return read_jsonl_prompts(data.path, data.problem_field, data.answer_field, data.id_field, data.num_prompts)


def read_jsonl_prompts(path, problem_field: str = "problem", answer_field: str | None = "answer",
                       id_field: str | None = None, limit: int = 0) -> list[PromptInput]:
    if not path:
        raise ValueError("data.path is required with data.source=jsonl")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data.path {str(path)!r} does not exist or is not a file")
    prompts, seen = [], set()
    with path.open() as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict) or problem_field not in row:
                raise ValueError(f"{where}: no problem field {problem_field!r}")
            problem = row[problem_field]
            if not isinstance(problem, str) or not problem.strip():
                raise ValueError(f"{where}: the problem field {problem_field!r} is empty")
            if answer_field and answer_field not in row:
                raise ValueError(f"{where}: no answer field {answer_field!r}")
            prompt_id = str(row[id_field]) if id_field else f"{path.stem}-{len(prompts)}"
            if id_field and id_field not in row:
                raise ValueError(f"{where}: no id field {id_field!r}")
            if prompt_id in seen:
                raise ValueError(f"{where}: duplicate prompt id {prompt_id!r}")
            seen.add(prompt_id)
            answer = None if not answer_field else str(row[answer_field])
            prompts.append(PromptInput(prompt_id, problem, answer))
            if limit and len(prompts) >= limit:
                break
    if not prompts:
        raise ValueError(f"data.path {str(path)!r} holds no prompts")
    return prompts
