"""Where prompts come from: synthetic prompts for simulated engines, a local JSONL or Parquet
file, or a Hugging Face dataset by name (``math-ai/aime25``, ...; the hub or its local cache).

Every row is checked before any actor starts: a row without its problem or answer field, or with
an empty problem, is an error naming the row and the field.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.distributed.contract import PromptInput
from pipeline.errors import ConfigError, json_value
from pipeline.jobs.config import DataSource


def load_prompts(data) -> list[PromptInput]:
    """The prompts of a ``DataConfig``: ``num_prompts`` of them (all when 0), after the first ``skip_prompts``."""
    if data.source == DataSource.sim:
        count = data.num_prompts or 1
        return [PromptInput(f"sim{i}", f"Simulated prompt {i}") for i in range(data.skip_prompts, data.skip_prompts + count)]
    if data.source == DataSource.jsonl:
        return read_jsonl_prompts(data.path, data.problem_field, data.answer_field, data.id_field, data.num_prompts,
                                  data.skip_prompts)
    rows, label = _dataset_rows(data)
    return prompts_from_rows(((f"{label} row {i}", row) for i, row in enumerate(rows)), label.split("[")[0],
                             data.problem_field, data.answer_field, data.id_field, data.num_prompts, data.skip_prompts)


def _dataset_rows(data):
    """Rows of a Parquet file or a Hugging Face dataset, through the ``datasets`` library."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"data.source={data.source.value} needs the `datasets` package (pip install datasets)") from None
    try:
        if data.source == DataSource.parquet:
            if not data.path or not Path(data.path).is_file():
                raise ConfigError(f"data.path {data.path!r} does not exist or is not a file")
            table = datasets.load_dataset("parquet", data_files=str(data.path), split="train")
            return table, Path(data.path).name
        if not data.name:
            raise ConfigError("data.name is required with data.source=hf (for example math-ai/aime25)")
        table = datasets.load_dataset(data.name, data.subset, split=data.split)
        return table, f"{data.name}[{data.split}]"
    except ConfigError:
        raise
    except Exception as error:  # hub unreachable, unknown dataset or split: say which, in one line
        raise ConfigError(f"cannot load data {data.name or data.path!r}: {str(error).splitlines()[0]}") from None


def prompts_from_rows(rows, label: str, problem_field: str, answer_field: str | None, id_field: str | None,
                      limit: int = 0, skip: int = 0) -> list[PromptInput]:
    """Checked prompts from (where, row) pairs, the first ``skip`` left out (and not checked); ids
    are ``id_field`` or ``{label}-{index}``."""
    prompts, seen = [], set()
    for index, (where, row) in enumerate(rows):
        if index < skip:
            continue
        prompt = _check_row(row, where, problem_field, answer_field, id_field, f"{label}-{index}")
        if prompt.prompt_id in seen:
            raise ConfigError(f"{where}: duplicate prompt id {prompt.prompt_id!r}")
        seen.add(prompt.prompt_id)
        prompts.append(prompt)
        if limit and len(prompts) >= limit:
            break
    if not prompts:
        raise ConfigError(f"{label} holds no prompts")
    return prompts


def _check_row(row, where: str, problem_field: str, answer_field: str | None, id_field: str | None,
               default_id: str) -> PromptInput:
    if not isinstance(row, dict) or problem_field not in row:
        raise ConfigError(f"{where}: no problem field {problem_field!r}")
    problem = row[problem_field]
    if not isinstance(problem, str) or not problem.strip():
        raise ConfigError(f"{where}: the problem field {problem_field!r} is empty")
    if answer_field and (answer_field not in row or row[answer_field] is None):
        raise ConfigError(f"{where}: no answer field {answer_field!r}")
    if id_field and id_field not in row:
        raise ConfigError(f"{where}: no id field {id_field!r}")
    prompt_id = str(row[id_field]) if id_field else default_id
    return PromptInput(prompt_id, problem, None if not answer_field else str(row[answer_field]))


def read_jsonl_prompts(path, problem_field: str = "problem", answer_field: str | None = "answer",
                       id_field: str | None = None, limit: int = 0, skip: int = 0) -> list[PromptInput]:
    if not path:
        raise ConfigError("data.path is required with data.source=jsonl")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.path {str(path)!r} does not exist or is not a file")
    rows = []
    with path.open() as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {line_number}"
            rows.append((where, json_value(line, where)))
    return prompts_from_rows(rows, path.stem, problem_field, answer_field, id_field, limit, skip)
