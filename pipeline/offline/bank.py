"""Reward banks: many states per prompt, many scored rollouts per state; a JSONL line per prompt, or
Parquet (``pipeline.offline.parquet_banks``), chosen by the path.

The format is docs/formats.md's ("Reward bank"). A bank is what makes large-N questions cheap: once
collected (from a live engine or a simulated world), ``slg replay`` evaluates any policy and budget
on it offline. This module reads, validates, writes and simulates banks, and reads the plain
reward lists of ``slg predict`` (which also accepts bank lines); nothing else.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, json_value
from pipeline.offline.episodes import BankPrompt
from pipeline.offline.free_memory import check_free_memory
from pipeline.offline.parquet_banks import (
    A_REWARD,
    NOT_A_REWARD,
    REWARD_LIMIT,
    is_parquet_bank,
    no_bank_error,
    parquet_rows,
)
from pipeline.offline.parquet_writer import CHUNK_REWARDS, write_parquet_bank
from pipeline.offline.worlds import World
from pipeline.outputs.destinations import Destination, local_path, write_text


def read_bank(path) -> list[BankPrompt]:
    """Read and validate a whole bank (JSONL, or Parquet: a ``.parquet`` file or a folder of them);
    ``ConfigError`` naming the line (or row) and prompt of the first problem. ``slg replay`` reads
    banks a few prompts at a time instead (``pipeline.offline.bank_reader``)."""
    from pipeline.offline.bank_reader import StreamedBank  # it validates with parse_row, from here

    return StreamedBank(path, keep=True).prompts


def read_bank_rows(path) -> list[dict]:
    """The rows of a bank (the JSONL format's dicts), each validated."""
    return list(bank_rows(path))


def bank_rows(path) -> Iterator[dict]:
    """The rows of a bank, each validated as it is read (``ConfigError`` naming the first bad one, or a
    duplicate prompt id), a line or a row group at a time: what converting a bank writes, as it reads."""
    path = Path(path)
    if is_parquet_bank(path):
        rows = ((f"bank {path.name} prompt {i + 1}", row) for i, row in enumerate(parquet_rows(path)))
    elif not path.is_file():
        raise no_bank_error(path)
    else:
        rows = ((where, row) for _, _, _, where, row in jsonl_values(path, f"bank {path.name}"))
    seen = set()
    for where, row in rows:
        prompt_id = str(row.get("prompt_id")) if isinstance(row, dict) else None
        if prompt_id in seen:
            raise ConfigError(f"{where}: duplicate prompt_id {prompt_id!r}")
        seen.add(prompt_id)
        parse_row(row, where)
        yield row
    if not seen:
        raise ConfigError(f"bank {str(path)!r} holds no prompts")


def jsonl_values(path: Path, label: str, what: str = "bank") -> Iterator[tuple[int, int, int, str, object]]:
    """(line number, first byte, end byte, "LABEL line N", parsed value) of every non-blank line, read a
    line at a time; ``ConfigError`` naming ``what`` and the path where the file cannot be read or is not
    UTF-8 text (a gzipped JSONL, say), or the line where one is not valid JSON."""
    try:
        handle = path.open("rb")
    except OSError as error:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {error.strerror or error}") from None
    with handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            start, offset = offset, offset + len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ConfigError(f"cannot read {what} {str(path)!r}: not UTF-8 text ({error.reason} at byte "
                                  f"{start + error.start}; compressed? decompress it first)") from None
            if not line.strip():
                continue
            where = f"{label} line {number}"
            yield number, start, offset, where, json_value(line, where)


def first_bad_reward(rewards: list) -> tuple[int, str] | None:
    """(index, the value as a message shows it) of the first reward that is not a finite number
    within ``REWARD_LIMIT`` of 0 (booleans are not numbers); a long value is cut (10**400 has 401 digits)."""
    for k, value in enumerate(rewards):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= REWARD_LIMIT:
            shown = repr(value)  # (an integer beyond a float's range compares exactly above)
            return k, shown if len(shown) <= 40 else f"{shown[:30]}... ({len(shown)} characters)"
    return None


def read_reward_lists(path: str) -> tuple[list[str], list[list[float]]]:
    """(ids, reward lists) of ``slg predict --rewards``: ``{"id", "rewards"}`` lines or reward-bank
    lines (an entry per state, id ``PROMPT/sK``), or a Parquet bank (read as such lines);
    ``ConfigError`` naming the line for anything else."""
    if is_parquet_bank(Path(path)):
        lines = ((k + 1, f"bank {Path(path).name} prompt {k + 1}", row) for k, row in enumerate(read_bank_rows(path)))
    else:
        lines = ((number, where, row) for number, _, _, where, row in jsonl_values(Path(path), str(path), "--rewards"))
    ids, rows, seen = [], [], set()
    for number, where, row in lines:
        if isinstance(row, dict) and "rewards" in row:
            entries = [(str(row.get("id", f"line{number}")), row["rewards"])]
        elif isinstance(row, dict) and "states" in row and "prompt_id" in row and isinstance(row["states"], list):
            prompt_id = checked_prompt_id(row["prompt_id"], where)
            entries = [(f"{prompt_id}/s{k}", state) for k, state in enumerate(row["states"])]
            if not entries:
                raise ConfigError(f"{where}: 'states' is empty")
        else:
            raise ConfigError(f'{where}: expected {{"id": ..., "rewards": [...]}} or a reward-bank line with "prompt_id" and "states"')
        for name, rewards in entries:
            if not is_text(name):
                raise ConfigError(f"{where}: id {name!r} is not text that UTF-8 can hold")
            if not isinstance(rewards, list) or not rewards:
                raise ConfigError(f"{where}: rewards of id {name!r} must be a non-empty list of numbers")
            if (bad := first_bad_reward(rewards)) is not None:
                raise ConfigError(f"{where}: reward {bad[0]} of id {name!r} is {bad[1]}, {NOT_A_REWARD}")
            if name in seen:
                raise ConfigError(f"{where}: duplicate id {name!r}")
            seen.add(name)
            ids.append(name)
            rows.append([float(v) for v in rewards])
    if not rows:
        raise ConfigError(f"--rewards {str(path)!r} holds no reward lists")
    return ids, rows


def is_text(value) -> bool:
    """Whether ``value`` is a string that UTF-8 can hold (JSON lets a lone surrogate, ``"\\ud800"``,
    through; writing it to Parquet or JSONL would fail after the work)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def checked_prompt_id(value, where: str) -> str:
    """A bank line's ``prompt_id`` as a string: a string UTF-8 can hold, or an integer; ``ConfigError``
    naming ``where`` for anything else (null became the prompt "None")."""
    if not (is_text(value) or (isinstance(value, int) and not isinstance(value, bool))):
        raise ConfigError(f"{where}: 'prompt_id' must be a string (that UTF-8 can hold) or an integer, got {value!r}")
    return str(value)


def parse_row(row, where: str) -> BankPrompt:
    """A bank line (or a Parquet bank's prompt as such a line) validated and read; ``ConfigError`` naming ``where``."""
    if not isinstance(row, dict) or "prompt_id" not in row or "states" not in row:
        raise ConfigError(f"{where}: each line needs 'prompt_id' and 'states'")
    prompt_id = checked_prompt_id(row["prompt_id"], where)
    where = f"{where} (prompt {prompt_id!r})"
    states = row["states"]
    if not isinstance(states, list) or not states:
        raise ConfigError(f"{where}: 'states' must be a non-empty list of reward lists")
    for i, rewards in enumerate(states):
        if not isinstance(rewards, list) or not rewards:
            raise ConfigError(f"{where}: state {i} has an empty or malformed reward list")
        if (bad := first_bad_reward(rewards)) is not None:
            raise ConfigError(f"{where}: state {i} reward {bad[0]} is {bad[1]}, {NOT_A_REWARD}")
    state_texts = row.get("state_texts")
    if state_texts is not None and (not isinstance(state_texts, list) or len(state_texts) != len(states)
                                    or not all(map(is_text, state_texts))):
        raise ConfigError(f"{where}: 'state_texts' must hold one prefix string per state, each text that UTF-8 can hold")
    state_scores = row.get("state_scores")
    if state_scores is not None and (not isinstance(state_scores, list) or len(state_scores) != len(states)
                                     or first_bad_reward(state_scores) is not None):
        raise ConfigError(f"{where}: 'state_scores' must hold one prefix score per state, each {A_REWARD}")
    correct = row.get("correct")
    if correct is not None:
        shapes_match = isinstance(correct, list) and len(correct) == len(states) and all(
            isinstance(c, list) and len(c) == len(s) for c, s in zip(correct, states))
        if not shapes_match:
            raise ConfigError(f"{where}: 'correct' must have the same shape as 'states'")
        if not all(isinstance(x, bool) for c in correct for x in c):
            raise ConfigError(f"{where}: 'correct' must hold only true/false")
    responses = row.get("responses")  # texts beside the numbers (a Parquet bank collected with texts)
    if responses is not None and not (isinstance(responses, list) and len(responses) == len(states) and all(
            isinstance(r, list) and len(r) == len(s) and all(map(is_text, r)) for r, s in zip(responses, states))):
        raise ConfigError(f"{where}: 'responses' must have the same shape as 'states', each text that UTF-8 can hold")
    return BankPrompt(prompt_id, states, correct, state_texts, state_scores)


def write_bank(target, rows: Iterable[dict]) -> None:
    """Write bank rows at a path or a URL, whole: a reader never sees half a bank. A target ending in
    ``.parquet`` is written as Parquet, anything else as JSONL. ``rows`` may be drawn as they are
    written (``simulated_rows``): memory holds a chunk of them, not the bank."""
    if str(target).lower().endswith(".parquet"):
        local = local_path(str(target))
        if local is not None:
            write_parquet_bank(local, rows)
            return
        staging = Path(tempfile.mkdtemp(prefix="slg-staging-"))
        try:
            destination = Destination(str(target), staging)
            write_parquet_bank(destination.local, rows)
            destination.push()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return
    write_text(str(target), (json.dumps(row) + "\n" for row in rows))



# The fewest bytes a reward takes in a JSONL bank: its shortest text ("0.0", "1.0") and the ", "
# before the next (the brackets of a state's list stand in for the last one's). A bank's real size is
# about four times this for continuous rewards (21 bytes a reward, gaussian), never less.
JSONL_BYTES_PER_REWARD_AT_LEAST = 5


def simulate_bank(world: World, num_prompts: int, num_states: int, num_completions: int, seed: int) -> list[dict]:
    """Bank rows drawn from a world: per prompt, ``num_states`` states with ``num_completions`` rewards
    each; the whole bank in memory (``simulated_rows`` draws them as they are written).

    Prompt p draws from ``default_rng([seed, p])``, so a bank's first prompts do not depend on how
    many prompts it has.
    """
    return list(simulated_rows(world, num_prompts, num_states, num_completions, seed))


def simulated_rows(world: World, num_prompts: int, num_states: int, num_completions: int, seed: int) -> Iterator[dict]:
    """``simulate_bank``'s rows, each drawn only when it is taken: ``write_bank`` streams them to disk,
    so ``slg sim-bank`` holds a chunk of the bank, not all of it. The sizes are checked here, at
    the call, before the first row is drawn."""
    for name, value in (("prompts", num_prompts), ("states", num_states), ("completions", num_completions)):
        if value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value!r}")
    check_fits_in_memory(num_states, num_completions)
    return (_simulated_row(world, p, num_states, num_completions, seed) for p in range(num_prompts))


def _simulated_row(world: World, p: int, num_states: int, num_completions: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, p])
    latents = world.sample_states(rng, (num_states,))
    rewards, correct = world.sample_rewards(rng, np.repeat(latents[:, None], num_completions, axis=1))
    row = {"prompt_id": f"p{p}", "states": rewards.round(6).tolist()}
    if correct is not None:
        row["correct"] = correct.tolist()
    row["meta"] = {"world": world.family, "params": world.params, "seed": seed}
    return row


# What writing a simulated bank holds in memory per reward of a chunk, at its peak: the rows as
# Python lists and their text (JSONL) or columns (Parquet). Measured before banks were streamed, when
# the whole bank was one chunk, as the peak RSS of `/usr/bin/time -f %M slg sim-bank --family F
# --prompts 2000 --states 16 --completions 256 --out b.jsonl` (and b.parquet) less that of 10
# prompts, over the 8.2 M rewards: gaussian 61 and 78 bytes, bimodal (which also writes each
# rollout's grade) 83 and 86; the largest, with room to spare.
BANK_BYTES_PER_REWARD = 96


def check_fits_in_memory(num_states: int, num_completions: int) -> None:
    """``ConfigError`` where what a streamed simulated bank holds at once, at most one chunk being
    written (``parquet_writer.CHUNK_REWARDS``) and one prompt beyond it, would not fit in free memory."""
    rewards = num_states * num_completions
    check_free_memory((rewards + CHUNK_REWARDS) * BANK_BYTES_PER_REWARD,
                      f"--states {num_states} --completions {num_completions}: one prompt's {rewards:,} rewards, beside "
                      f"a chunk of {CHUNK_REWARDS:,} being written,")
