"""Writing a reward bank as one Parquet file (the columns of ``pipeline.offline.parquet_banks``), a
chunk of prompts at a time: memory holds one chunk, not the bank, so the rows may be drawn as
they are written (``slg sim-bank``), and the file appears whole, under its name, only once all
are written.

A file's rewards are float32 where every reward in it survives the round trip exactly, else
float64, and it has a ``responses`` column where any prompt has texts. A chunk decides that for
itself; one that needs more than the chunks before it (a reward float32 cannot hold, texts)
rewrites what was written so far in the wider schema, a row group at a time, so the file reads as
if it had been written whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.offline.parquet_banks import FORMAT_VERSION, METADATA_KEY
from pipeline.outputs.files import parents_made

ROW_GROUP_REWARDS = 1 << 18  # a row group's rewards, about: a reader takes a few prompts at a time

# Prompts are gathered into chunks of about this many rewards before they become a table (about
# 100 MB as Python lists); each chunk is written as row groups of about ``ROW_GROUP_REWARDS``.
CHUNK_REWARDS = 4 * ROW_GROUP_REWARDS


def write_parquet_bank(path, rows: Iterable[dict], metadata: dict | None = None) -> None:
    """Bank rows (the JSONL format's) as one Parquet file at ``path``, through a temporary name;
    ``metadata`` joins the format version in the schema metadata. As for ``atomic_write_text``, a link
    keeps pointing at the file it names, which is the one replaced (and ``new/../b.parquet`` makes no
    ``new``)."""
    path = Path(os.path.realpath(path))
    temporary, writer = path.with_name(f".{path.name}.{os.getpid()}.tmp"), None  # two writing processes never share one
    with parents_made(path):
        try:
            for chunk, rewards in _chunks(rows, CHUNK_REWARDS):
                table = _bank_table(chunk, metadata)
                if writer is None:
                    writer = _parquet_writer(temporary, table.schema)
                elif not (wide := _wider(writer.schema, table.schema)).equals(writer.schema):
                    writer = _rewritten(writer, temporary, wide)
                writer.write_table(_conformed(table, writer.schema), row_group_size=_row_group_rows(rewards, len(table)))
            writer = writer or _parquet_writer(temporary, _bank_table([], metadata).schema)
            writer.close()
            temporary.replace(path)
        except BaseException:
            if writer is not None:
                writer.close()
            temporary.unlink(missing_ok=True)
            raise


def _row_group_rows(rewards: int, num_rows: int) -> int:
    """Rows a row group of a chunk of ``num_rows`` rows and ``rewards`` rewards: its rows split evenly
    into groups of about ``ROW_GROUP_REWARDS`` rewards (no small group left at the end of each chunk)."""
    groups = max(1, round(rewards / ROW_GROUP_REWARDS))
    return max(1, -(-num_rows // groups))


def _chunks(rows: Iterable[dict], limit: int) -> Iterator[tuple[list[dict], int]]:
    """``rows`` in lists of whole prompts, each of at least ``limit`` rewards but the last, with their
    rewards' count."""
    chunk, size = [], 0
    for row in rows:
        chunk.append(row)
        size += sum(len(rewards) for rewards in row["states"])
        if size >= limit:
            yield chunk, size
            chunk, size = [], 0
    if chunk:
        yield chunk, size


def _bank_table(rows: list[dict], metadata: dict | None):
    """Rows as a table of one row per (prompt, state)."""
    import pyarrow as pa

    flat = [r for row in rows for r in row["states"]]
    with np.errstate(over="ignore"):  # a reward beyond float32's range becomes inf: not exact, so float64
        exact32 = bool(flat) and all(np.array_equal(np.asarray(r, dtype=np.float32).astype(float), np.asarray(r, dtype=float))
                                     for r in flat)
    fields = [("prompt_id", pa.string()), ("state", pa.int32()), ("state_text", pa.string()), ("state_score", pa.float64()),
              ("rewards", pa.list_(pa.float32() if exact32 else pa.float64())), ("correct", pa.list_(pa.bool_())),
              ("meta", pa.string())]
    with_texts = any(row.get("responses") is not None for row in rows)
    if with_texts:
        fields.append(("responses", pa.list_(pa.string())))
    columns: dict[str, list] = {name: [] for name, _ in fields}
    for row in rows:
        for k, rewards in enumerate(row["states"]):
            columns["prompt_id"].append(str(row["prompt_id"]))
            columns["state"].append(k)
            columns["state_text"].append(row["state_texts"][k] if row.get("state_texts") is not None else None)
            columns["state_score"].append(float(row["state_scores"][k]) if row.get("state_scores") is not None else None)
            columns["rewards"].append(np.asarray(rewards, dtype=np.float32 if exact32 else np.float64))
            columns["correct"].append(row["correct"][k] if row.get("correct") is not None else None)
            columns["meta"].append(json.dumps(row["meta"]) if k == 0 and row.get("meta") is not None else None)
            if with_texts:
                columns["responses"].append(row["responses"][k] if row.get("responses") is not None else None)
    schema = pa.schema(fields, metadata={METADATA_KEY: json.dumps({"format_version": FORMAT_VERSION, **(metadata or {})}).encode()})
    return pa.table(columns, schema=schema)


def _parquet_writer(path: Path, schema):
    import pyarrow.parquet as pq

    # Rewards are nearly all distinct: a dictionary would cost more than it saves; split into byte
    # streams, their exponents compress (float32: 3.4 bytes a reward rather than 6 with a dictionary).
    return pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=["prompt_id", "state_text", "meta"],
                            use_byte_stream_split=["rewards.list.element"])


def _wider(written, chunk):
    """The schema that holds both: float64 rewards where either has them, ``responses`` where either has it."""
    import pyarrow as pa

    rewards = written.field("rewards")
    if pa.types.is_float64(chunk.field("rewards").type.value_type):
        rewards = chunk.field("rewards")
    wide = written.set(written.get_field_index("rewards"), rewards)
    if "responses" in chunk.names and "responses" not in written.names:
        wide = wide.append(chunk.field("responses"))
    return wide


def _rewritten(writer, temporary: Path, schema):
    """A writer of ``schema`` at ``temporary`` that holds what ``writer`` wrote there so far,
    rewritten in it a row group at a time (bounded memory again)."""
    import pyarrow.parquet as pq

    writer.close()
    narrow, wide = temporary.with_name(f"{temporary.name}.narrow"), None
    temporary.replace(narrow)
    try:
        wide = _parquet_writer(temporary, schema)
        written = pq.ParquetFile(narrow)
        for group in range(written.num_row_groups):
            wide.write_table(_conformed(written.read_row_group(group), schema))
    except BaseException:
        if wide is not None:
            wide.close()
        raise
    finally:
        narrow.unlink(missing_ok=True)
    return wide


def _conformed(table, schema):
    """``table`` in ``schema``: each column cast to its type (exact: float32 to float64), a column it
    lacks (``responses``) all null."""
    import pyarrow as pa

    return pa.table([table.column(field.name).cast(field.type) if field.name in table.column_names
                     else pa.nulls(len(table), field.type) for field in schema], schema=schema)
