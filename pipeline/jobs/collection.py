"""``slg collect``: a reward bank from live engines, through the same driver and replicas as ``slg run``.

For each prompt: S rollouts from the prompt, each cut into a state (the first T tokens; a rollout
shorter than T cannot be one, so a prompt may get fewer), then M scored rollouts from every state
(``CollectStates``: a sampling plan, not a search), asked ``collect.rollouts_per_round`` at a time so
that what the driver has out for a prompt stays bounded whatever M is. Seeds derive from (prompt,
node, index within the node), so a prompt's rewards are the same however it is cut into rounds, and
whether it is collected in one run or after a kill.

Where the bank goes is ``pipeline.jobs.bank_writers``'s business: a folder of Parquet shards (the
default; written whole as each shard's prompts finish, resumed shard by shard) or JSONL lines (a
``--out`` ending in ``.jsonl``; resumed prompt by prompt). The driver holds the prompts in flight:
``driver.max_concurrent_prompts``, fewer where their rewards would pass ``IN_FLIGHT_REWARDS`` (at
least two), each in arrays of 4 bytes a reward for a Parquet bank; the job holds at most those
plus one shard of finished prompts waiting for the rest of their shard (for a JSONL bank, finished
prompts waiting for an earlier one: lines go in the data's order).
"""

from __future__ import annotations

import logging
import math
import resource
from dataclasses import replace

import numpy as np

from pipeline.distributed.driver import SearchObserver
from pipeline.distributed.search_record import SearchRecord, SearchSpec, Slot, node_name
from pipeline.jobs.bank_writers import open_bank_writer
from pipeline.jobs.config import RunConfig
from pipeline.jobs.prompts import load_prompts
from pipeline.offline.episodes import BankPrompt
from pipeline.search.base import SearchPolicy
from pipeline.search.protocol import NO_NODE, ROOT, Request
from pipeline.stats.prefix_signal import PrefixSignal

log = logging.getLogger("slg")

IN_FLIGHT_REWARDS = 1 << 22  # rewards of the prompts the driver holds at once (16 MB of float32), unless fewer prompts fit


class CollectStates(SearchPolicy):
    """The sampling plan of a bank line: S rollouts from the prompt, each cut into a state, then M
    rollouts from every state (S = ``num_states``, M = ``completions_per_state`` of its
    ``CollectConfig``), so that the bank holds S i.i.d. states of M rewards each. The M are asked in
    rounds of about ``rollouts_per_round`` rollouts over all states."""

    name = "collect"

    def _search(self):
        num_states, per_state = self.config.num_states, self.config.completions_per_state
        (root,) = yield [Request.uniform(ROOT, num_states, self.batch_size, score_prefixes=True)]  # the bank's state_scores
        states = np.where(root.can_branch, np.arange(num_states)[None, :], NO_NODE)
        if (states == NO_NODE).all():
            return  # no rollout reached the state length
        step = max(1, self.config.rollouts_per_round // num_states)
        for done in range(0, per_state, step):
            yield [Request.per_episode(states[:, k], min(step, per_state - done)) for k in range(num_states)]


class NodeSamples:
    """One node's finite rewards (and, where graded, verdicts; with texts, responses) in plan order."""

    def __init__(self, rewards: np.ndarray, correct: np.ndarray | None, texts: list[str]):
        self.rewards, self.correct, self.texts = rewards, correct, texts


class _NodeRecord:
    """A node's samples as they come, a round at a time, in arrays sized for the node's plan (grown
    by doubling past it): no object per round, so a state's 10^4 rewards cost 5 bytes each (4 for a
    float32 reward, 1 for its verdict)."""

    def __init__(self, capacity: int, dtype):
        self.rewards, self.correct, self.texts = np.empty(capacity, dtype), np.zeros(capacity, dtype=bool), []
        self.size, self.graded = 0, True  # graded: every round came with verdicts

    def add(self, rewards: np.ndarray, correct: np.ndarray | None, texts: list[str]) -> None:
        end = self.size + len(rewards)
        if end > len(self.rewards):
            capacity = max(end, 2 * len(self.rewards))
            self.rewards, self.correct = np.resize(self.rewards, capacity), np.resize(self.correct, capacity)
        self.rewards[self.size:end] = rewards
        if correct is None:
            self.graded = False
        else:
            self.correct[self.size:end] = correct
        self.texts += texts
        self.size = end

    def samples(self) -> NodeSamples:
        return NodeSamples(self.rewards[:self.size], self.correct[:self.size] if self.graded else None, self.texts)


class SampleRecorder(SearchObserver):
    """Keeps every finite reward (and, with ``keep_texts``, every response text) per node, in the
    order the policy planned them, and adds them to the search's result as ``samples``. Rewards are
    kept as ``dtype`` (float32 for a Parquet bank, which stores that)."""

    def __init__(self, keep_texts: bool, dtype=np.float64):
        self.keep_texts, self.dtype = keep_texts, dtype
        self._nodes: dict[SearchRecord, dict[str, _NodeRecord]] = {}
        self._texts: dict[int, list[str]] = {}  # id(slot) -> texts by position, until the round is scored

    def rollout_scored(self, search: SearchRecord, slot: Slot, position: int, rollout, reward: float, sequence: int) -> None:
        if self.keep_texts:
            self._texts.setdefault(id(slot), [""] * slot.count)[position] = rollout.response_text

    def round_scored(self, search: SearchRecord) -> None:
        nodes = self._nodes.setdefault(search, {})
        for slot in search.slots:
            texts = self._texts.pop(id(slot), [])
            if slot.node == NO_NODE:  # a state the plan could not have (its root rollout was too short)
                continue
            name = node_name(slot.node)
            if name not in nodes:  # a collect plan says how many a state gets: M
                planned = getattr(search.spec.search_config, "completions_per_state", slot.count)
                nodes[name] = _NodeRecord(slot.count if slot.node == ROOT else max(planned, slot.count), self.dtype)
            kept = ~np.isnan(slot.rewards)
            nodes[name].add(slot.rewards[kept], slot.correct[kept] if search.any_correct is not None else None,
                            [text for text, keep in zip(texts, kept) if keep])

    def search_finished(self, search: SearchRecord, row: dict) -> None:
        row["samples"] = {name: record.samples() for name, record in self._nodes.pop(search, {}).items()}
        row["state_texts"] = {node_name(node): state.text for node, state in search.states.items()}
        row["state_scores"] = {node_name(node): search.prefix_scores.get(state.token_ids)
                               for node, state in search.states.items()}


def collect(config: RunConfig) -> int:
    """Collect the bank ``config.collect`` describes; returns how many prompts this call added.

    The bank (and a JSONL bank's side file) may be at a URL: each shard is uploaded as it is
    written; JSONL files are staged locally and uploaded at each checkpoint and at the end."""
    from pipeline.distributed.session import Session

    settings = config.collect
    prompts = load_prompts(config.data)
    writer = open_bank_writer(config, prompts)  # a bad --out fails here, before Ray starts
    pending = writer.pending(prompts)
    budget = settings.num_states * (settings.completions_per_state + 1)
    searches = [SearchSpec(p, CollectStates.name, budget, CollectStates, settings) for p in pending]
    log.info("collecting %d prompts x %d states x %d rollouts into %s (%d already there)", len(prompts),
             settings.num_states, settings.completions_per_state, writer.target, len(prompts) - len(pending))
    in_flight = prompts_in_flight(config)
    config = replace(config, driver=replace(config.driver, max_concurrent_prompts=in_flight))
    correlations = []

    def write(finished: list[dict]) -> None:
        writer.write(finished)
        correlations.extend(prefix_correlation_of(result) for result in finished)

    with writer:
        with Session(config) as session:
            window = in_flight if writer.in_order else None
            session.start_driver(searches, SampleRecorder(writer.keeps_texts, writer.reward_dtype), in_order_window=window)
            progress = session.drive(write, resumed=len(prompts) - len(pending))
    log.info("peak memory: driver %.0f MB, this process %.0f MB", progress["driver_peak_rss_mb"],
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    report_prefix_signal(PrefixSignal.of(correlations), len(searches))
    return len(searches)


def prefix_correlation_of(result: dict) -> float:
    """A collected prompt's prefix correlation as ``slg replay --bank`` will measure it on its bank
    line (``BankPrompt.prefix_correlation``: states with one prefix merged); NaN where the line has no
    state, no prefix scores, or a state without a reward (replay refuses such a bank)."""
    names = state_names(result["samples"])
    if not names:
        return math.nan
    row = _states_of(result, names, as_lists=False)
    if "state_scores" not in row or any(len(rewards) == 0 for rewards in row["states"]):
        return math.nan
    return BankPrompt(row["prompt_id"], row["states"], state_texts=row["state_texts"],
                      state_scores=row["state_scores"]).prefix_correlation()


def report_prefix_signal(signal: PrefixSignal | None, collected: int) -> None:
    """One line on whether the prompts this call collected have prefix scores that track rewards
    (``pipeline.stats.prefix_signal``): a warning where they clearly do not, as ``slg replay --bank``
    gives. Nothing where fewer than two prompts had a correlation (a resumed bank's earlier prompts are
    not read again: ``slg replay --bank`` measures the whole bank)."""
    if signal is None:
        return
    if signal.says_nothing:
        log.warning("%s", signal.warning(f"the {collected} prompts collected"))
    else:
        log.info("prefix scores of the %d prompts collected: %s", collected, signal.describe())


def prompts_in_flight(config: RunConfig) -> int:
    """``driver.max_concurrent_prompts``, or fewer: as many prompts as hold about ``IN_FLIGHT_REWARDS``
    rewards, at least two (a prompt's rounds keep the engines busy; the driver's memory then does not grow with M)."""
    per_prompt = config.collect.num_states * config.collect.completions_per_state
    return min(config.driver.max_concurrent_prompts, max(2, IN_FLIGHT_REWARDS // per_prompt))


def state_names(samples: dict) -> list[str]:
    """A collect search's states in root-rollout order (the root's own rollouts, which only cut the
    states, are not a state)."""
    return sorted((n for n in samples if n != "root"), key=lambda n: int(n[1:]))


def bank_row(result: dict, meta: dict, as_lists: bool = True) -> dict | None:
    """A bank line from a collect search (rewards as lists for JSON, else as the recorder's arrays).
    None when no rollout was long enough to be a state."""
    names = state_names(result["samples"])
    if not names:
        log.warning("prompt %s: no rollout reached the state length; nothing written", result["prompt_id"])
        return None
    return {**_states_of(result, names, as_lists), "meta": {**meta, "state_nodes": names}}


def _states_of(result: dict, names: list[str], as_lists: bool) -> dict:
    """A bank line's prompt and states (``names``, in order): rewards, verdicts, prefixes, and the
    prefix scores where every state has one."""
    samples = result["samples"]
    row = {"prompt_id": result["prompt_id"],
           "states": [samples[n].rewards.tolist() if as_lists else samples[n].rewards for n in names]}
    if result.get("pass_at_n") is not None:
        row["correct"] = [samples[n].correct.tolist() if as_lists else samples[n].correct for n in names]
    # the prefix of each state: replay pools states with the same prefix (the same state, drawn twice)
    row["state_texts"] = [result["state_texts"][n] for n in names]
    scores = [result["state_scores"].get(n) for n in names]
    if all(score is not None and math.isfinite(score) for score in scores):  # the prefix alone, scored by the RM
        row["state_scores"] = scores
    return row


def texts_row(result: dict, prompt_text: str) -> dict | None:
    """The side line of a bank line: the prompt, each state's prefix text and each rollout's whole
    response text (state prefix included), in the bank's order and shape."""
    names = state_names(result["samples"])
    if not names:
        return None
    return {"prompt_id": result["prompt_id"], "prompt": prompt_text, "state_nodes": names,
            "state_texts": [result["state_texts"][n] for n in names],
            "responses": [result["samples"][n].texts for n in names]}
