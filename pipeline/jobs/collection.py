"""``slg collect``: a reward bank from live engines, through the same driver and replicas as ``slg run``.

For each prompt: S rollouts from the prompt, each cut into a state (the first T tokens; a rollout
shorter than T cannot be one, so a prompt may get fewer), then M scored rollouts from every state
(``CollectStates``: a sampling plan, not a search). Each prompt becomes one bank line (docs/formats.md
format) as it finishes; with ``collect.texts``, a side file gets the state and response texts in
the same shape, its line written before the bank line. Rerunning continues where it stopped:
prompts already in the bank are skipped, a torn last line is dropped, and side lines of prompts
the bank lacks (a kill between the two writes) are dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.distributed.driver import SearchObserver
from pipeline.distributed.search_record import SearchRecord, SearchSpec, Slot, node_name
from pipeline.jobs.config import RunConfig, bank_path
from pipeline.jobs.prompts import load_prompts
from pipeline.logs import log_to_file
from pipeline.outputs.destinations import Checkpoints, Destination
from pipeline.outputs.files import JsonlSink, atomic_write_text, drop_torn_line, read_jsonl
from pipeline.search.base import SearchPolicy
from pipeline.search.protocol import NO_NODE, ROOT, Request

log = logging.getLogger("slg")


class CollectStates(SearchPolicy):
    """The sampling plan of a bank line: S rollouts from the prompt, each cut into a state, then M
    rollouts from every state (S = ``num_states``, M = ``completions_per_state`` of its
    ``CollectConfig``), so that the bank holds S i.i.d. states of M rewards each."""

    name = "collect"
    scores_prefixes = True  # the bank keeps each state's prefix score (state_scores)

    def _search(self):
        num_states, per_state = self.config.num_states, self.config.completions_per_state
        (root,) = yield [Request.uniform(ROOT, num_states, self.batch_size)]
        states = np.where(root.can_branch, np.arange(num_states)[None, :], NO_NODE)
        yield [Request.per_episode(states[:, k], per_state) for k in range(num_states)]


@dataclass
class NodeSamples:
    rewards: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


class SampleRecorder(SearchObserver):
    """Keeps every finite reward (and, with ``keep_texts``, every response text) per node, in the
    order the policy planned them, and adds them to the search's result as ``samples``."""

    def __init__(self, keep_texts: bool):
        self.keep_texts = keep_texts
        self._samples: dict[SearchRecord, dict[str, NodeSamples]] = {}
        self._texts: dict[int, list[str]] = {}  # id(slot) -> texts by position, until the round is scored

    def rollout_scored(self, search: SearchRecord, slot: Slot, position: int, rollout, reward: float, sequence: int) -> None:
        if self.keep_texts:
            self._texts.setdefault(id(slot), [""] * slot.count)[position] = rollout.response_text

    def round_scored(self, search: SearchRecord) -> None:
        samples = self._samples.setdefault(search, {})
        for slot in search.slots:
            texts = self._texts.pop(id(slot), [])
            if slot.node == NO_NODE:  # a state the plan could not have (its root rollout was too short)
                continue
            kept = ~np.isnan(slot.rewards)
            record = samples.setdefault(node_name(slot.node), NodeSamples())
            record.rewards += slot.rewards[kept].tolist()
            record.correct += slot.correct[kept].tolist()
            if texts:
                record.texts += [text for text, keep in zip(texts, kept) if keep]

    def search_finished(self, search: SearchRecord, row: dict) -> None:
        row["samples"] = self._samples.pop(search, {})
        row["state_texts"] = {node_name(node): state.text for node, state in search.states.items()}
        row["state_scores"] = {node_name(node): search.prefix_scores.get(state.token_ids)
                               for node, state in search.states.items()}


def collect(config: RunConfig) -> int:
    """Collect the bank ``config.collect`` describes; returns how many prompts this call added.

    The bank and the side file may be URLs: staged locally, uploaded at each checkpoint and at the end."""
    from pipeline.distributed.session import Session

    settings = config.collect
    prompts = load_prompts(config.data)
    bank = Destination(bank_path(config), Path(tempfile.mkdtemp(prefix="slg-staging-")))
    texts = Destination(settings.texts, Path(tempfile.mkdtemp(prefix="slg-staging-"))) if settings.texts else None
    files = [f for f in (texts, bank) if f is not None]
    for file in files:
        file.pull()
    log_to_file(bank.local.with_name(bank.local.name + ".log"))
    drop_torn_line(bank.local)
    done = {row["prompt_id"] for row in read_jsonl(bank.local)} if bank.local.exists() else set()
    if texts is not None:
        _keep_only_prompts(texts.local, done)
    budget = settings.num_states * (settings.completions_per_state + 1)
    searches = [SearchSpec(p, CollectStates.name, budget, CollectStates, settings) for p in prompts if p.prompt_id not in done]
    meta = {"generator": config.generator.model or f"sim:{config.generator.sim.family}",
            "reward": config.reward.model or "sim", "state_tokens": config.generator.state_tokens,
            "completions": settings.completions_per_state, "seed": config.seed}
    log.info("collecting %d prompts x %d states x %d rollouts into %s (%d already there)", len(prompts),
             settings.num_states, settings.completions_per_state, bank.target, len(done))
    prompt_texts = {p.prompt_id: p.text for p in prompts}

    def push() -> None:
        for file in files:  # the side file first: the uploaded bank never has a prompt it lacks
            file.push()

    checkpoints = Checkpoints(push, config.storage.checkpoint_interval_s)
    try:
        with Session(config) as session, JsonlSink(bank.local) as bank_sink, \
                (JsonlSink(texts.local) if texts else contextlib.nullcontext()) as side_sink:
            session.start_driver(searches, SampleRecorder(keep_texts=texts is not None))

            def write(finished: list[dict]) -> None:
                if side_sink is not None:  # first: a bank line always has its side line
                    side_sink.write(texts_row(r, prompt_texts[r["prompt_id"]]) for r in finished)
                bank_sink.write(bank_row(r, meta) for r in finished)
                checkpoints.due()

            session.drive(write, resumed=len(done))
    finally:
        push()
    return len(searches)


def _state_names(samples: dict) -> list[str]:
    """A collect search's states in root-rollout order (the root's own rollouts, which only cut the
    states, are not a state)."""
    return sorted((n for n in samples if n != "root"), key=lambda n: int(n[1:]))


def bank_row(result: dict, meta: dict) -> dict | None:
    """A bank line from a collect search. None when no rollout was long enough to be a state."""
    samples = result["samples"]
    names = _state_names(samples)
    if not names:
        log.warning("prompt %s: no rollout reached the state length; nothing written", result["prompt_id"])
        return None
    row = {"prompt_id": result["prompt_id"], "states": [samples[n].rewards for n in names]}
    if result.get("pass_at_n") is not None:
        row["correct"] = [samples[n].correct for n in names]
    # the prefix of each state: replay pools states with the same prefix (the same state, drawn twice)
    row["state_texts"] = [result["state_texts"][n] for n in names]
    scores = [result["state_scores"].get(n) for n in names]
    if all(score is not None and math.isfinite(score) for score in scores):  # the prefix alone, scored by the RM
        row["state_scores"] = scores
    row["meta"] = {**meta, "state_nodes": names}
    return row


def texts_row(result: dict, prompt_text: str) -> dict | None:
    """The side line of a bank line: the prompt, each state's prefix text and each rollout's whole
    response text (state prefix included), in the bank's order and shape."""
    names = _state_names(result["samples"])
    if not names:
        return None
    return {"prompt_id": result["prompt_id"], "prompt": prompt_text, "state_nodes": names,
            "state_texts": [result["state_texts"][n] for n in names],
            "responses": [result["samples"][n].texts for n in names]}


def _keep_only_prompts(path: Path, prompt_ids: set[str]) -> None:
    """Drop the lines of ``path`` whose prompt is not in ``prompt_ids`` (a kill between the side
    line and the bank line), rewriting it atomically; warn about bank prompts it lacks."""
    rows = []
    if path.exists():
        drop_torn_line(path)
        rows = read_jsonl(path)
        kept = [row for row in rows if row["prompt_id"] in prompt_ids]
        if len(kept) != len(rows):
            atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
        rows = kept
    missing = len(prompt_ids - {row["prompt_id"] for row in rows})
    if missing:
        log.warning("%d prompts already in the bank have no texts in %s (collected without --texts)", missing, path)
