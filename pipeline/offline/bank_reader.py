"""A reward bank read a few prompts at a time: an index of where each prompt lies, chunks read on demand.

``slg replay`` never holds a whole bank in one process. Opening a bank (:class:`StreamedBank`) reads
it once, prompt by prompt, validating each as ``pipeline.offline.bank`` does (``ConfigError`` naming
the prompt, before any episode is played), and keeps only where each prompt lies (a Parquet file and
its rows, or a JSONL file and its bytes) and what the checks and reports of a replay need (the
smallest state pool, the largest reward, whether its prefix scores track its rewards).
:meth:`StreamedBank.chunks` then reads runs of consecutive prompts, a few MB at a time (only the row
groups that hold them), or hands out where they lie (:meth:`StreamedBank.slices`) for tasks to read
themselves. A bank already in memory (``list[BankPrompt]``, :class:`MemoryBank`) is served in the
same chunks, so both are played by the same tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, json_value
from pipeline.offline.bank import jsonl_values, parse_row
from pipeline.offline.episodes import BankPrompt
from pipeline.offline.parquet_banks import is_parquet_bank, no_bank_error, parquet_files, prompt_blocks, read_row_range
from pipeline.stats.prefix_signal import PrefixSignal

CHUNK_REWARDS = 1 << 20  # rewards per chunk (8 MB as float64): what one task holds of a bank, at least a prompt


@dataclass(frozen=True)
class SmallestPool:
    """The smallest state pool of a bank (states merged by prefix): what ``--strict`` checks budgets against."""

    size: int
    prompt_id: str
    state: int


class BankChunks:
    """A bank as runs of consecutive prompts: ``chunks()`` yields (index of the first prompt, prompts)."""

    label: str = ""
    num_prompts: int = 0
    prompt_ids: list[str] | tuple = ()  # in the bank's order (its chunks' order)
    max_reward: float = -np.inf
    smallest_pool: SmallestPool | None = None
    # whether its prefix scores track its rewards, over its prompts (a bank on disk: ``slg replay`` warns);
    # None where fewer than two prompts have prefix scores and rewards that vary
    prefix_signal: PrefixSignal | None = None

    def chunks(self, max_rewards: int | None = None) -> Iterator[tuple[int, list[BankPrompt]]]:
        """Runs of consecutive prompts of at most ``max_rewards`` rewards (``CHUNK_REWARDS``), at least one prompt each."""
        raise NotImplementedError

    def head(self, count: int, max_rewards: int = 4 * CHUNK_REWARDS) -> MemoryBank:
        """The first ``count`` prompts, fewer where they would pass ``max_rewards`` rewards (at least one)."""
        prompts, rewards = [], 0
        for _, chunk in self.chunks():
            for prompt in chunk:
                if len(prompts) == count or (prompts and rewards + len(prompt.rewards) > max_rewards):
                    return MemoryBank(prompts, self.label)
                prompts.append(prompt)
                rewards += len(prompt.rewards)
        return MemoryBank(prompts, self.label)


class MemoryBank(BankChunks):
    """Prompts already read (the ``replay`` library's ``list[BankPrompt]``)."""

    def __init__(self, prompts: list[BankPrompt], label: str = ""):
        self.prompts, self.label, self.num_prompts = prompts, label, len(prompts)
        self.prompt_ids = [p.prompt_id for p in prompts]
        if prompts:
            self.max_reward = max(float(p.rewards.max()) for p in prompts)
            self.smallest_pool = min((SmallestPool(int(p.lengths.min()), p.prompt_id, int(p.lengths.argmin()))
                                      for p in prompts), key=lambda pool: pool.size)

    def chunks(self, max_rewards: int | None = None):
        sizes = [len(p.rewards) for p in self.prompts]
        for start, stop in _runs(sizes, max_rewards or CHUNK_REWARDS):
            yield start, self.prompts[start:stop]


class StreamedBank(BankChunks):
    """A bank on disk (JSONL, a ``.parquet`` file or a folder of them), indexed by one validating pass."""

    def __init__(self, path, label: str | None = None, keep: bool = False):
        """``keep``: also hold the prompts the validating pass read (``read_bank``: a whole bank at once)."""
        self.path = Path(path)
        self.label = str(path) if label is None else label
        self.parquet = is_parquet_bank(self.path)
        if not self.parquet and not self.path.is_file():
            raise no_bank_error(self.path)
        self.files = parquet_files(self.path) if self.parquet else [self.path]
        spans: list[tuple[int, int, int, int]] = []  # (file, start, stop, rewards): rows, or bytes of JSONL
        seen: set[str] = set()
        self.prompts: list[BankPrompt] = []
        self.prompt_ids: list[str] = []
        correlations = []
        for file_index, file in enumerate(self.files):
            for start, stop, where, prompt in self._scan(file, len(spans)):
                if prompt.prompt_id in seen:
                    raise ConfigError(f"bank {str(self.path)!r}: the states of prompt {prompt.prompt_id!r} are not consecutive"
                                      if self.parquet else f"{where}: duplicate prompt_id {prompt.prompt_id!r}")
                seen.add(prompt.prompt_id)
                self.prompt_ids.append(prompt.prompt_id)
                spans.append((file_index, start, stop, len(prompt.rewards)))
                if keep:
                    self.prompts.append(prompt)
                self.max_reward = max(self.max_reward, float(prompt.rewards.max()))
                pool = SmallestPool(int(prompt.lengths.min()), prompt.prompt_id, int(prompt.lengths.argmin()))
                if self.smallest_pool is None or pool.size < self.smallest_pool.size:
                    self.smallest_pool = pool
                correlations.append(prompt.prefix_correlation())
        if not spans:
            raise ConfigError(f"bank {str(self.path)!r} holds no prompts")
        self.spans = np.array(spans, dtype=np.int64)
        self.num_prompts = len(spans)
        self.prefix_signal = PrefixSignal.of(correlations)

    def _scan(self, file: Path, before: int) -> Iterator[tuple[int, int, str, BankPrompt]]:
        """(start, stop, where, prompt) of every prompt of one file, validated; ``before`` prompts came in earlier files."""
        if self.parquet:
            for k, block in enumerate(prompt_blocks(file, self.path)):
                where = f"bank {self.path.name} prompt {before + k + 1}"
                yield block.first_row, block.stop_row, where, block.prompt(where)
            return
        for _, start, stop, where, row in jsonl_values(file, f"bank {file.name}"):
            yield start, stop, where, parse_row(row, where)

    def chunks(self, max_rewards: int | None = None):
        for piece in self.slices(max_rewards):
            yield piece.first, piece.read()

    def slices(self, max_rewards: int | None = None) -> Iterator[BankSlice]:
        """The chunks as where they lie, to be read by whoever plays them (``BankSlice.read``)."""
        for file_index in np.unique(self.spans[:, 0]):
            indices = np.flatnonzero(self.spans[:, 0] == file_index)
            for first, stop in _runs(self.spans[indices, 3].tolist(), max_rewards or CHUNK_REWARDS):
                rows = self.spans[indices[first:stop]]
                yield BankSlice(self.path, self.parquet, self.files[int(file_index)], int(rows[0, 1]), int(rows[-1, 2]),
                                int(indices[first]), stop - first)


@dataclass(frozen=True)
class BankSlice:
    """Consecutive prompts of one file of a bank on disk (rows of a Parquet file, bytes of a JSONL
    one): small to send, read where a task runs (a machine that sees the same files)."""

    bank: Path
    parquet: bool
    file: Path
    start: int
    stop: int
    first: int  # the index of its first prompt in the bank
    count: int

    def read(self) -> list[BankPrompt]:
        if self.parquet:
            blocks = read_row_range(self.file, self.bank, self.start, self.stop)
            return [block.prompt(f"bank {self.bank.name} prompt {self.first + k + 1}") for k, block in enumerate(blocks)]
        changed = f"bank {str(self.file)!r} changed after it was read (prompts {self.first + 1}-{self.first + self.count})"
        try:
            with self.file.open("rb") as handle:
                handle.seek(self.start)
                text = handle.read(self.stop - self.start).decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{changed}: {getattr(error, 'strerror', None) or error}") from None
        lines = [line for line in text.split("\n") if line.strip()]  # as the scan: \u2028 is not a line end
        if len(lines) != self.count:
            raise ConfigError(f"{changed}: {len(lines)} lines where it had {self.count}")
        wheres = [f"bank {self.file.name} prompt {self.first + k + 1}" for k in range(len(lines))]
        return [parse_row(json_value(line, where), where) for line, where in zip(lines, wheres)]


def as_bank(target, label: str = "") -> BankChunks:
    """A ``replay`` target that is a bank, as chunks: a list of prompts, or a bank already opened."""
    return target if isinstance(target, BankChunks) else MemoryBank(list(target), label)


def _runs(sizes: list[int], max_total: int) -> Iterator[tuple[int, int]]:
    """[start, stop) runs of consecutive items whose sizes add up to at most ``max_total`` (at least one item)."""
    start, total = 0, 0
    for index, size in enumerate(sizes):
        if index > start and total + size > max_total:
            yield start, index
            start, total = index, 0
        total += size
    if start < len(sizes):
        yield start, len(sizes)
