"""Reward banks as Parquet: one row per (prompt, state), readable by any Parquet tool.

Columns (docs/formats.md, "Reward bank"):

- ``prompt_id`` (string), ``state`` (int32: the state's place in its prompt's list),
- ``state_text`` (string, null where unknown): the state's prefix; equal prefixes are one state,
- ``state_score`` (float64, null where unknown): the reward model's score of the prefix alone,
- ``rewards`` (list of float32, or float64 where a reward is not exactly a float32),
- ``correct`` (list of bool, null where rollouts are not graded),
- ``meta`` (string: the prompt's JSON meta, null where none),
- ``responses`` (list of string, only in banks written with texts): each rollout's whole response.

Rows of one prompt are consecutive, in state order, within one file. A bank is one ``.parquet`` file
or a folder of them (shards, read in name order; names starting with ``.`` or ``_`` are not
shards). The schema metadata ``slg.bank`` is a JSON object: the format version, and for banks that
``slg collect`` wrote, the config, models and seed they came from and the prompts of the shard.
Rewards are written as float32 when every reward of the file survives the round trip exactly (the
reward models' own precision), else as float64: converting a bank never changes a reward. Row
groups hold about ``ROW_GROUP_REWARDS`` rewards (``pipeline.offline.parquet_writer``, which writes
banks), so that a reader can take a few prompts at a time. pyarrow is imported only in the two.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.offline.episodes import BankPrompt

FORMAT_VERSION = 1
# A reward or prefix score beyond it is refused: the statistics square and sum rewards, and a float
# holds up to 1.8e308 (1e200 and -1e200 overflowed a variance to inf after the whole replay).
REWARD_LIMIT = 1e100
A_REWARD = f"a finite number within +-{REWARD_LIMIT:.0e}"
NOT_A_REWARD = f"not {A_REWARD}"
METADATA_KEY = b"slg.bank"
OPTIONAL_COLUMNS = ("state_text", "state_score", "correct")  # what a replay reads beside prompt_id and rewards
COLUMN_TYPES = {  # the columns a reader takes: (what each must be, in words; (shape, item)); `state` is not read
    "prompt_id": ("a string", ("one", "text")),
    "state_text": ("a string", ("one", "text")),
    "state_score": ("a number", ("one", "number")),
    "rewards": ("lists of numbers", ("list", "number")),
    "correct": ("lists of true/false", ("list", "bool")),
    "meta": ("JSON text", ("one", "text")),
    "responses": ("lists of strings", ("list", "text")),
}


def is_parquet_bank(path) -> bool:
    """A ``.parquet`` file, or a folder holding some (a sharded bank)."""
    path = Path(path)
    return path.suffix.lower() == ".parquet" or (path.is_dir() and bool(shard_files(path)))


def no_bank_error(path) -> ConfigError:
    """The one line for a bank path that names no bank: nothing there, or a folder without shards."""
    if Path(path).is_dir():
        return ConfigError(f"bank {str(path)!r} is a folder without Parquet shards (*.parquet)")
    return ConfigError(f"bank {str(path)!r} does not exist or is not a file")


def shard_files(folder: Path) -> list[Path]:
    """The Parquet files of a folder in name order, leaving out hidden ones (temporary files of a writer)."""
    return sorted(f for f in Path(folder).glob("*.parquet") if not f.name.startswith((".", "_")))


def parquet_files(path) -> list[Path]:
    """The files of a Parquet bank; ``ConfigError`` when there are none."""
    path = Path(path)
    files = shard_files(path) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise ConfigError(f"bank {str(path)!r} does not exist or holds no Parquet file")
    return files


def read_bank_metadata(file) -> dict:
    """The ``slg.bank`` schema metadata of one file ({} where there is none), checked as ``bank_metadata``."""
    import pyarrow.parquet as pq

    return bank_metadata(pq.read_schema(file).metadata or {}, file)


def bank_metadata(schema_metadata: dict, file) -> dict:
    """The ``slg.bank`` object of a file's schema metadata ({} where there is none: a Parquet file
    written by another tool, read as format 1); ``ConfigError`` where it is not a JSON object, or names
    a format other than ``FORMAT_VERSION`` (a newer one's columns may mean something else)."""
    if METADATA_KEY not in schema_metadata:
        return {}
    try:
        metadata = json.loads(schema_metadata[METADATA_KEY])
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise ConfigError(f"bank {str(file)!r}: its {METADATA_KEY.decode()} metadata is not a JSON object")
    version = metadata.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ConfigError(f"bank {str(file)!r} is in bank format {version!r}; this slg reads format {FORMAT_VERSION}"
                          + (" (a newer slg wrote it?)" if newer else ""))
    return metadata


def parquet_rows(path) -> Iterator[dict]:
    """The bank's prompts as rows of the JSONL format (``prompt_id``, ``states`` and what else they hold),
    read a row group at a time: memory holds one row group and one prompt, not the bank."""
    path = Path(path)
    row: dict | None = None
    seen: set[str] = set()
    for file in parquet_files(path):
        parquet = _open(file)
        _columns(parquet, file)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group)
            absent = [None] * len(table)
            columns = {name: table.column(name).to_pylist() for name in table.column_names}
            for i, prompt_id in enumerate(columns["prompt_id"]):
                if row is None or prompt_id != row["prompt_id"]:
                    if prompt_id in seen:
                        raise ConfigError(f"bank {str(path)!r}: the states of prompt {prompt_id!r} are not consecutive")
                    if row is not None:
                        yield row
                    seen.add(prompt_id)
                    row = {"prompt_id": prompt_id, "states": []}
                row["states"].append(columns["rewards"][i])
                for column, key in (("correct", "correct"), ("state_text", "state_texts"), ("state_score", "state_scores"),
                                    ("responses", "responses")):
                    value = columns.get(column, absent)[i]
                    if value is not None:
                        row.setdefault(key, []).append(value)
                if columns.get("meta", absent)[i] is not None and "meta" not in row:
                    row["meta"] = _meta(columns["meta"][i], f"bank {str(path)!r} prompt {prompt_id!r}")
    if row is not None:
        yield row


def _meta(text: str, where: str):
    """A prompt's ``meta`` (any JSON value) from its text."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply for the parser
        raise ConfigError(f"{where}: 'meta' is not valid JSON text") from None


class PromptBlock:
    """The rows of one prompt in a Parquet file (a zero-copy slice of what was read); ``prompt``
    validates them as ``pipeline.offline.bank.parse_row`` validates a JSONL line, and builds the prompt."""

    def __init__(self, table, prompt_id: str, first_row: int, stop_row: int):
        self.table, self.prompt_id, self.first_row, self.stop_row = table, prompt_id, first_row, stop_row

    def prompt(self, where: str) -> BankPrompt:
        where = f"{where} (prompt {self.prompt_id!r})"
        states = self._rewards(where)
        texts = self._optional("state_text", where, "'state_texts' must hold one prefix string per state")
        scores_message = f"'state_scores' must hold one prefix score per state, each {A_REWARD}"
        scores = self._optional("state_score", where, scores_message)
        if scores is not None and not (np.abs(np.asarray(scores, dtype=float)) <= REWARD_LIMIT).all():
            raise ConfigError(f"{where}: {scores_message}")
        correct = None
        if "correct" in self.table.column_names and self.table.column("correct").null_count < len(self.table):
            column = self.table.column("correct").combine_chunks()
            lengths = column.value_lengths().to_numpy(zero_copy_only=False)
            if column.null_count or not np.array_equal(lengths, [len(s) for s in states]):
                raise ConfigError(f"{where}: 'correct' must have the same shape as 'states'")
            flat = column.flatten()
            if flat.null_count:
                raise ConfigError(f"{where}: 'correct' must hold only true/false")
            values = flat.to_numpy(zero_copy_only=False).astype(bool)
            correct = np.split(values, np.cumsum(lengths)[:-1])
        return BankPrompt(self.prompt_id, states, correct, texts, scores)

    def _rewards(self, where: str) -> list[np.ndarray]:
        import pyarrow as pa

        column = self.table.column("rewards").combine_chunks()
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) or not (pa.types.is_floating(column.type.value_type)
                                                     or pa.types.is_integer(column.type.value_type)):
            raise ConfigError(f"{where}: 'rewards' must be lists of numbers, got {column.type}")
        lengths = column.value_lengths().to_numpy(zero_copy_only=False)  # NaN where a list is null
        empty = np.flatnonzero(~(lengths > 0))
        if empty.size:
            raise ConfigError(f"{where}: state {int(empty[0])} has an empty or malformed reward list")
        lengths = lengths.astype(np.int64)
        flat = column.flatten()
        values = flat.to_numpy(zero_copy_only=False).astype(float)
        bad = np.flatnonzero(~(np.abs(values) <= REWARD_LIMIT))
        if bad.size:
            position = int(bad[0])
            state = int(np.searchsorted(np.cumsum(lengths), position, side="right"))
            value = None if flat[position].as_py() is None else float(values[position])
            raise ConfigError(f"{where}: state {state} reward {position - int(lengths[:state].sum())} is {value!r}, "
                              f"{NOT_A_REWARD}")
        return np.split(values, np.cumsum(lengths)[:-1])

    def _optional(self, name: str, where: str, message: str) -> list | None:
        """A per-state column: None where it is null for every state, else a value for each."""
        if name not in self.table.column_names:
            return None
        column = self.table.column(name)
        if column.null_count == len(self.table):
            return None
        if column.null_count:
            raise ConfigError(f"{where}: {message}")
        return column.to_pylist()


def prompt_blocks(file: Path, bank: Path) -> Iterator[PromptBlock]:
    """Every prompt of one file, reading a row group at a time (a prompt may run over several)."""
    parquet = _open(file)
    columns = _columns(parquet, file)
    carry, row = None, 0
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=columns)
        if carry is not None:
            import pyarrow as pa

            table = pa.concat_tables([carry.table, table])
            row = carry.first_row
        blocks = _split(table, row, bank)
        row += len(table)
        carry = blocks.pop() if blocks else None
        yield from blocks
    if carry is not None:
        yield carry


def read_row_range(file: Path, bank: Path, start: int, stop: int) -> list[PromptBlock]:
    """The prompts of rows [start, stop) of one file (whole prompts), reading only the row groups that hold them."""
    import pyarrow as pa

    parquet = _open(file)
    bounds = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
    groups = [g for g in range(parquet.num_row_groups) if bounds[g] < stop and bounds[g + 1] > start]
    table = pa.concat_tables([parquet.read_row_group(g, columns=_columns(parquet, file)) for g in groups])
    return _split(table.slice(start - int(bounds[groups[0]]), stop - start), start, bank)


def _split(table, first_row: int, bank: Path) -> list[PromptBlock]:
    """The rows of ``table`` (row ``first_row`` of its file onwards) cut into runs of one prompt id."""
    ids = table.column("prompt_id").to_pylist()
    blocks, start = [], 0
    for index in range(1, len(ids) + 1):
        if index == len(ids) or ids[index] != ids[start]:
            if ids[start] is None:
                raise ConfigError(f"bank {str(bank)!r}: row {first_row + start} has no prompt_id")
            blocks.append(PromptBlock(table.slice(start, index - start), str(ids[start]), first_row + start, first_row + index))
            start = index
    return blocks


def _open(file: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file)
    except Exception as error:  # pyarrow raises several kinds for a file that is not Parquet
        raise ConfigError(f"cannot read bank {str(file)!r} as Parquet: {str(error).splitlines()[0]}") from None


def _columns(parquet, file: Path) -> list[str]:
    """The bank columns to read, once the file's format and columns are known to be ones this code reads."""
    bank_metadata(parquet.schema_arrow.metadata or {}, file)
    names = parquet.schema_arrow.names
    missing = {"prompt_id", "rewards"} - set(names)
    if missing:
        raise ConfigError(f"bank {str(file)!r} lacks the column(s) {sorted(missing)}")
    for field in parquet.schema_arrow:
        if field.name in COLUMN_TYPES and not _holds(field.type, field.name):
            raise ConfigError(f"bank {str(file)!r}: column {field.name!r} must be {COLUMN_TYPES[field.name][0]}, "
                              f"got {field.type}")
    return ["prompt_id", "rewards", *(name for name in OPTIONAL_COLUMNS if name in names)]


def _holds(kind, name: str) -> bool:
    """Whether a column of arrow type ``kind`` may be the bank column ``name`` (a column of nulls
    only may be any optional one)."""
    import pyarrow as pa

    if pa.types.is_null(kind):
        return name not in ("prompt_id", "rewards")
    string_view = getattr(pa.types, "is_string_view", lambda kind: False)  # pyarrow >= 16
    checks = {"text": (pa.types.is_string, pa.types.is_large_string, string_view),
              "number": (pa.types.is_floating, pa.types.is_integer), "bool": (pa.types.is_boolean,)}
    shape, item = COLUMN_TYPES[name][1]
    if shape == "list":
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
            return False
        kind = kind.value_type
    if pa.types.is_dictionary(kind):  # dictionary-encoded (a pandas Categorical): its values are what counts
        kind = kind.value_type
    return any(check(kind) for check in checks[item])
