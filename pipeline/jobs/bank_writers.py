"""Where ``slg collect`` puts its bank, and how a rerun knows what is there: Parquet shards or JSONL lines.

**Parquet shards** (the default; ``--out`` a folder or a URL): shard i holds prompts
[i P, (i + 1) P) of the data (P = ``collect.prompts_per_shard``, by default as many as hold about
``SHARD_REWARDS`` rewards, a few MB), as ``part-0000i.parquet``, written whole through a temporary
name (uploaded whole for a URL) once all its prompts have finished. Rewards are stored as float32,
the reward models' own precision (a simulated reward model's float64 draws are rounded to the
nearest float32). Each shard's schema metadata says what it came from (the config, the models, the
seed) and which prompts it holds, so a rerun skips the shards already there (their prompts are not
collected again), refuses to mix them with another config's, and writes the others: the same bank
as an uninterrupted run, since seeds derive from prompt ids. With ``collect.responses``, each
state's row also holds its rollouts' responses. Finished prompts wait here for their shard's other
prompts; the driver admits prompts at most ``driver.max_concurrent_prompts`` places out of order,
so at most that many plus one shard wait.

**JSONL lines** (``--out`` ending in ``.jsonl``): a line per prompt, in the data's order: a
finished prompt waits for the ones before it (at most ``driver.max_concurrent_prompts`` of them, as
for shards), so that two collections with one command write the same bytes (replay draws a bank's
prompts by their place in it). With ``collect.texts``, a side file gets the state and response
texts in the same shape, its line written before the bank line. A rerun skips the prompts already
in the bank, drops a torn last line, and drops side lines of prompts the bank lacks (a kill between
the two writes); prompts that were waiting at a kill are collected again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.jobs.config import RunConfig, bank_path, config_as_dict, is_jsonl_bank
from pipeline.logs import log_to_file
from pipeline.outputs.destinations import Checkpoints, Destination, OutputDir, local_path
from pipeline.outputs.files import JsonlSink, atomic_write_text, changed_keys, drop_torn_line, read_jsonl

log = logging.getLogger("slg")

SHARD_REWARDS = 1 << 20  # rewards per shard by default: about 4 MB of float32
# Keys that may change between a collect and its resumption: they change no reward of the bank.
RESUMABLE_KEYS = ("output_dir", "overwrite", "plot", "methods", "budgets", "search.", "driver.", "ray.", "storage.",
                  "bench.", "collect.out", "collect.texts", "collect.rollouts_per_round")


def open_bank_writer(config: RunConfig, prompts: list):
    """The writer of the bank ``config`` names, checked and ready to resume (``ConfigError`` for a bad target)."""
    from pipeline.jobs.collection import bank_row, texts_row  # the rows are the collect job's; their files are ours

    if is_jsonl_bank(bank_path(config)):
        return JsonlBank(config, prompts, bank_row, texts_row)
    return ParquetShards(config, prompts, bank_row)


def bank_meta(config: RunConfig) -> dict:
    """Every bank line's ``meta``: what collected it."""
    return {"generator": config.generator.model or f"sim:{config.generator.sim.family}",
            "reward": config.reward.model or "sim", "state_tokens": config.generator.state_tokens,
            "completions": config.collect.completions_per_state, "seed": config.seed}


def _finish_once(unfinished: set, prompt_id: str) -> None:
    """Take ``prompt_id`` off the prompts still to finish; a prompt that finishes twice, or that was
    not asked for, would be written twice or stranded, so it stops the job."""
    if prompt_id not in unfinished:
        raise ValueError(f"prompt {prompt_id!r} finished twice, or was not asked for")
    unfinished.remove(prompt_id)


class ParquetShards:
    """A bank as a folder (or URL) of Parquet shards; ``write`` takes finished collect results."""

    in_order = True              # finished prompts wait for their shard: the driver keeps them near in order
    reward_dtype = np.float32    # what the recorder keeps: what the shards store

    def __init__(self, config: RunConfig, prompts: list, make_row):
        settings = config.collect
        self.target, self.make_row, self.keeps_texts = bank_path(config), make_row, settings.responses
        path = local_path(self.target)
        if path is not None and path.exists() and not path.is_dir():
            raise ConfigError(f"--out {self.target!r} is a file; a Parquet bank is a folder of shards "
                              "(or give a path ending in .jsonl)")
        self.folder = OutputDir(self.target, "--out")
        # beside the folder, not in it (a reader of the folder takes every file for a shard); for a URL, locally
        log_to_file(path.with_name(path.name + ".log") if path is not None else
                    Path(tempfile.mkdtemp(prefix="slg-collect-")) / "collect.log")
        per_shard = settings.prompts_per_shard or max(1, SHARD_REWARDS // (settings.num_states * settings.completions_per_state))
        ids = [p.prompt_id for p in prompts]
        self.shards = [ids[i:i + per_shard] for i in range(0, len(ids), per_shard)]
        self.shard_of = {prompt_id: index for index, shard in enumerate(self.shards) for prompt_id in shard}
        self.config, self.meta = config_as_dict(config), bank_meta(config)
        self.metadata = {"config": self.config, "models": {"generator": self.meta["generator"], "reward": self.meta["reward"]},
                         "seed": config.seed}
        self.done = self._shards_already_there()
        self.waiting: dict[int, dict[str, dict | None]] = {}  # shard -> its finished prompts' rows (None: no state)
        self.unfinished = {p.prompt_id for p in self.pending(prompts)}  # asked for and not finished yet

    def _shards_already_there(self) -> set[int]:
        """The shards a run wrote before (checked against this config and its prompts); leftovers of a kill removed."""
        path = local_path(self.target)
        if path is not None:
            for leftover in path.glob(".part-*.parquet.tmp"):
                leftover.unlink(missing_ok=True)
        done = set()
        for name in self.folder.names("part-*.parquet"):
            index = int(name[len("part-"):-len(".parquet")])
            metadata = self._metadata_of(name)
            changed = changed_keys(metadata.get("config", {}), self.config, RESUMABLE_KEYS)
            if changed:
                raise ConfigError(f"--out {self.target!r} holds a bank collected with another config (changed: "
                                  f"{', '.join(changed)}); use another --out")
            if index >= len(self.shards) or metadata.get("shard", {}).get("prompts") != self.shards[index]:
                raise ConfigError(f"--out {self.target!r}: shard {name} holds other prompts than this config's shard "
                                  f"{index}; use another --out")
            done.add(index)
        return done

    def _metadata_of(self, name: str) -> dict:
        from pipeline.offline.parquet_banks import read_bank_metadata

        try:
            with self.folder.open(name) as handle:
                return read_bank_metadata(handle)
        except ConfigError:  # read, but not a bank this code can extend (bank_metadata)
            raise
        except Exception as error:  # pyarrow raises several kinds for a file that is not Parquet
            raise ConfigError(f"--out {self.target!r}: cannot read {name} as Parquet: {str(error).splitlines()[0]}") from None

    def pending(self, prompts: list) -> list:
        return [p for p in prompts if self.shard_of[p.prompt_id] not in self.done]

    def write(self, finished: list[dict]) -> None:
        for result in finished:
            _finish_once(self.unfinished, result["prompt_id"])
            index = self.shard_of[result["prompt_id"]]
            self.waiting.setdefault(index, {})[result["prompt_id"]] = self._row(result)
            if len(self.waiting[index]) == len(self.shards[index]):
                self._write_shard(index, self.waiting.pop(index))

    def _row(self, result: dict) -> dict | None:
        row = self.make_row(result, self.meta, as_lists=False)
        if row is not None:
            row["states"] = [np.asarray(rewards, dtype=np.float32) for rewards in row["states"]]
            if self.keeps_texts:
                row["responses"] = [result["samples"][name].texts for name in row["meta"]["state_nodes"]]
        return row

    def _write_shard(self, index: int, rows: dict) -> None:
        from pipeline.offline.parquet_writer import write_parquet_bank

        name = f"part-{index:05d}.parquet"
        destination = self.folder.file(name)
        # the shard's prompt ids at the top, as formats.md has always said, and with its place among the shards
        metadata = {**self.metadata, "prompts": self.shards[index],
                    "shard": {"index": index, "of": len(self.shards), "prompts": self.shards[index]}}
        write_parquet_bank(destination.local, [rows[p] for p in self.shards[index] if rows[p] is not None], metadata)
        if destination.remote:
            destination.push()
            destination.local.unlink()
        self.done.add(index)
        log.info("wrote shard %s (%d prompts)", name, len(self.shards[index]))

    def __enter__(self) -> ParquetShards:
        return self

    def __exit__(self, *exc) -> None:
        if self.waiting:
            log.info("%d prompts finished in shards not yet complete: a rerun collects them again",
                     sum(len(rows) for rows in self.waiting.values()))
        self.folder.close()


class JsonlBank:
    """A bank as JSONL lines (and a side file of texts), staged locally for a URL, pushed at checkpoints."""

    in_order = True              # finished prompts wait for the ones before them: the driver keeps them near in order
    reward_dtype = np.float64

    def __init__(self, config: RunConfig, prompts: list, make_row, make_texts_row):
        settings = config.collect
        self.make_row, self.make_texts_row = make_row, make_texts_row
        self.bank = Destination(bank_path(config), Path(tempfile.mkdtemp(prefix="slg-staging-")))
        self.texts = Destination(settings.texts, Path(tempfile.mkdtemp(prefix="slg-staging-"))) if settings.texts else None
        self.target, self.keeps_texts = self.bank.target, self.texts is not None
        self.files = [f for f in (self.texts, self.bank) if f is not None]  # the side file first: see push
        for file in self.files:
            file.pull()
        log_to_file(self.bank.local.with_name(self.bank.local.name + ".log"))
        drop_torn_line(self.bank.local)
        self.done = {row["prompt_id"] for row in read_jsonl(self.bank.local, ("prompt_id",))} if self.bank.local.exists() else set()
        self.order = [p.prompt_id for p in self.pending(prompts)]  # the order lines are written in
        self.unfinished = set(self.order)  # asked for and not finished yet
        self.written = 0  # of ``order``
        self.waiting: dict[str, dict] = {}  # finished prompts whose turn has not come, by id
        if self.texts is not None:
            _keep_only_prompts(self.texts.local, self.done)
        self.meta = bank_meta(config)
        self.prompt_texts = {p.prompt_id: p.text for p in prompts}
        self.checkpoints = Checkpoints(self.push, config.storage.checkpoint_interval_s)
        self._stack = contextlib.ExitStack()

    def pending(self, prompts: list) -> list:
        return [p for p in prompts if p.prompt_id not in self.done]

    def __enter__(self) -> JsonlBank:
        self.bank_sink = self._stack.enter_context(JsonlSink(self.bank.local))
        self.side_sink = self._stack.enter_context(JsonlSink(self.texts.local)) if self.texts else None
        return self

    def write(self, finished: list[dict]) -> None:
        for result in finished:
            _finish_once(self.unfinished, result["prompt_id"])
            self.waiting[result["prompt_id"]] = result
        ready = []
        while self.written < len(self.order) and self.order[self.written] in self.waiting:
            ready.append(self.waiting.pop(self.order[self.written]))
            self.written += 1
        if not ready:
            return
        if self.side_sink is not None:  # first: a bank line always has its side line
            self.side_sink.write(self.make_texts_row(r, self.prompt_texts[r["prompt_id"]]) for r in ready)
        self.bank_sink.write(self.make_row(r, self.meta) for r in ready)
        self.checkpoints.due()

    def push(self) -> None:
        for file in self.files:  # the side file first: the uploaded bank never has a prompt it lacks
            file.push()

    def __exit__(self, *exc) -> None:
        if self.waiting:
            log.info("%d prompts finished before an earlier one: a rerun collects them again", len(self.waiting))
        self._stack.close()
        self.push()


def _keep_only_prompts(path: Path, prompt_ids: set[str]) -> None:
    """Drop the lines of ``path`` whose prompt is not in ``prompt_ids`` (a kill between the side
    line and the bank line), rewriting it atomically; warn about bank prompts it lacks."""
    rows = []
    if path.exists():
        drop_torn_line(path)
        rows = read_jsonl(path, ("prompt_id",))
        kept = [row for row in rows if row["prompt_id"] in prompt_ids]
        if len(kept) != len(rows):
            atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
        rows = kept
    missing = len(prompt_ids - {row["prompt_id"] for row in rows})
    if missing:
        log.warning("%d prompts already in the bank have no texts in %s (collected without --texts)", missing, path)
