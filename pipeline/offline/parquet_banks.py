"""Reward banks as Parquet: one row per (prompt, state), readable by any Parquet tool.

Columns (docs/formats.md, "Reward bank"):

- ``prompt_id`` (string), ``state`` (int32: the state's place in its prompt's list),
- ``state_text`` (string, null where unknown): the state's prefix; equal prefixes are one state,
- ``rewards`` (list of float32, or float64 where a reward is not exactly a float32),
- ``correct`` (list of bool, null where rollouts are not graded),
- ``state_score`` (float64, null where unknown): the reward model's score of the prefix alone,
- ``meta`` (string: the prompt's JSON meta, null where none).

Rows of one prompt are consecutive, in state order. A bank is one ``.parquet`` file or a folder of
them (shards, read in name order). The file's schema metadata ``slg.bank`` says the format version.
Rewards are written as float32 when every reward of the bank survives the round trip exactly (the
reward models' own precision), else as float64: converting a bank never changes a reward.
pyarrow is imported here only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError

FORMAT_VERSION = 1
METADATA_KEY = b"slg.bank"


def is_parquet_bank(path) -> bool:
    """A ``.parquet`` file, or a folder holding some (a sharded bank)."""
    path = Path(path)
    return path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet")))


def read_parquet_rows(path) -> list[dict]:
    """The bank's prompts as rows of the JSONL format (``prompt_id``, ``states`` and what else they hold)."""
    import pyarrow.parquet as pq

    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise ConfigError(f"bank {str(path)!r} does not exist or holds no Parquet file")
    rows: list[dict] = []
    by_id: dict[str, dict] = {}
    for file in files:
        try:
            table = pq.read_table(file)
        except Exception as error:  # pyarrow raises several kinds for a file that is not Parquet
            raise ConfigError(f"cannot read bank {str(file)!r} as Parquet: {str(error).splitlines()[0]}") from None
        missing = {"prompt_id", "rewards"} - set(table.column_names)
        if missing:
            raise ConfigError(f"bank {str(file)!r} lacks the column(s) {sorted(missing)}")
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        for i, prompt_id in enumerate(columns["prompt_id"]):
            row = by_id.get(prompt_id)
            if row is None or row is not rows[-1]:
                if row is not None:
                    raise ConfigError(f"bank {str(path)!r}: the states of prompt {prompt_id!r} are not consecutive")
                row = by_id[prompt_id] = {"prompt_id": prompt_id, "states": []}
                rows.append(row)
            row["states"].append(columns["rewards"][i])
            for column, key in (("correct", "correct"), ("state_text", "state_texts"), ("state_score", "state_scores")):
                value = columns.get(column, [None] * (i + 1))[i]
                if value is not None:
                    row.setdefault(key, []).append(value)
            if columns.get("meta", [None] * (i + 1))[i] is not None and "meta" not in row:
                row["meta"] = json.loads(columns["meta"][i])
    return rows


def write_parquet_bank(path, rows: list[dict]) -> None:
    """Bank rows (the JSONL format's) as one Parquet file, written whole through a temporary name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = [r for row in rows for r in row["states"]]
    exact32 = bool(flat) and all(np.array_equal(np.asarray(r, dtype=np.float32).astype(float), np.asarray(r, dtype=float))
                                 for r in flat)
    reward_type = pa.list_(pa.float32() if exact32 else pa.float64())
    columns: dict[str, list] = {"prompt_id": [], "state": [], "state_text": [], "state_score": [], "rewards": [],
                                "correct": [], "meta": []}
    for row in rows:
        for k, rewards in enumerate(row["states"]):
            columns["prompt_id"].append(str(row["prompt_id"]))
            columns["state"].append(k)
            columns["state_text"].append(row["state_texts"][k] if row.get("state_texts") is not None else None)
            columns["state_score"].append(float(row["state_scores"][k]) if row.get("state_scores") is not None else None)
            columns["rewards"].append([float(x) for x in rewards])
            columns["correct"].append(row["correct"][k] if row.get("correct") is not None else None)
            columns["meta"].append(json.dumps(row["meta"]) if k == 0 and row.get("meta") is not None else None)
    schema = pa.schema([("prompt_id", pa.string()), ("state", pa.int32()), ("state_text", pa.string()),
                        ("state_score", pa.float64()), ("rewards", reward_type), ("correct", pa.list_(pa.bool_())), ("meta", pa.string())],
                       metadata={METADATA_KEY: json.dumps({"format_version": FORMAT_VERSION}).encode()})
    table = pa.table(columns, schema=schema)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary, compression="zstd")
    temporary.replace(path)
