"""The tasks of a replay and the in-process way to run them: plain functions of plain arguments.

Pure numpy. A replay is a stream of tasks: play one (method, budget) on a range of prompts, compute
the two ceilings of a range of bank prompts, or evaluate the bank's exact BoN curve at some n on a
range of prompts. Each is a module-level function of picklable arguments, so the same task runs
here (:class:`LocalExecutor`, ``slg replay --workers 1``) or as a Ray task
(``pipeline.distributed.replay_executor``), with the same result to the last digit: every random
stream derives from (seed, budget, prompt index[, part of its repeats]) or, for a world, (seed,
budget, first prompt of the task), never from where or when a task runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.offline.bank_reader import BankSlice
from pipeline.offline.ceilings import CEILING_SAMPLES, DISCOVERY_FRACTION, PromptArms
from pipeline.offline.episodes import BankPrompt, BankSource, WorldSource, run_episodes
from pipeline.offline.responses import TokenModel
from pipeline.offline.worlds import World
from pipeline.search.config import SearchConfig
from pipeline.search.methods import policy_class
from pipeline.stats.pool import PoolCurve

SLICES_KEPT = 2  # slices of a bank a process keeps read: a chunk's tasks come in a row (Ray interleaves two)

# A bank prompt's repeats in parts: part 0 keeps the streams of a prompt played whole, (seed, budget,
# prompt index); part k > 0 draws from (seed, budget, prompt index, PART_STREAMS, k), which no other
# stream of the replay uses (those end in the prompt index, 1 or 3).
PART_STREAMS = 4


@dataclass(frozen=True)
class Play:
    """Play ``method`` at ``budget`` on prompts [start, stop) of a target, ``repeats`` episodes each.
    The method plays ``played`` rollouts (the budget, or its N at equal tokens) on the budget's streams.
    A bank prompt whose repeats would not fit one task is played in parts (one prompt, ``part`` k of
    its repeats), each on streams of its own."""

    label: str
    method: str
    budget: int
    start: int
    stop: int
    repeats: int
    seed: int
    config: SearchConfig
    played: int
    tokens: TokenModel
    part: int = 0

    @property
    def rollouts(self) -> int:
        return self.played * self.repeats * (self.stop - self.start)


@dataclass
class Played:
    """Per prompt and repeat (P, R): the best reward, whether it was right (a world's: bools, or None
    where it grades nothing; a bank's: 1.0 or 0.0, NaN for a prompt that is not graded), and
    whether the episode drew more rollouts from a state than its pool holds (None: a world); the sums
    over the episodes of rollouts, generated tokens, reward-model tokens and reward-model items."""

    best: np.ndarray
    correct: np.ndarray | None
    exceeded: np.ndarray | None
    spend: np.ndarray


@dataclass(frozen=True)
class Task:
    """A function and its arguments (a chunk of a bank may be a handle the executor resolves), and
    what the result belongs to."""

    function: Callable
    args: tuple
    meta: object


def prompts_of(chunk: list[BankPrompt] | BankSlice) -> list[BankPrompt]:
    """A chunk of a bank: the prompts themselves, or a slice of the bank's file to read here (once
    for the tasks of its chunk that this process runs one after another, as ``--workers 1`` reads a
    chunk once for all its tasks; the file's size and time stamp say it is the same file)."""
    if not isinstance(chunk, BankSlice):
        return chunk
    stamp = chunk.file.stat()
    return _read_slice(chunk, stamp.st_size, stamp.st_mtime_ns)


@functools.lru_cache(maxsize=SLICES_KEPT)
def _read_slice(piece: BankSlice, size: int, modified_ns: int) -> list[BankPrompt]:
    return piece.read()


def play(task: Play, unit: World | list[BankPrompt] | BankSlice, first: int = 0) -> Played:
    """Play ``task``; ``unit`` is the world, or a chunk of a bank whose first prompt is prompt ``first``."""
    cls = policy_class(task.method)
    seed, budget = task.seed, task.budget
    if isinstance(unit, World):
        batch, start = (task.stop - task.start) * task.repeats, task.start
        source = WorldSource(unit, batch, np.random.default_rng([seed, budget, start]),
                             prefix_rng=np.random.default_rng([seed, budget, start, 2]),  # drawn only where a request asks
                             tokens=task.tokens, token_rng=np.random.default_rng([seed, budget, start, 3]))
        policy = cls(task.played, batch, task.config, rng=np.random.default_rng([seed, budget, start, 1]),
                     true_value=source.true_value)
        ledger = run_episodes(policy, source)
        shape = (task.stop - task.start, task.repeats)
        correct = ledger.best_correct.reshape(shape) if ledger.has_correct else None
        return Played(ledger.best_reward.reshape(shape), correct, None, _spend(ledger))
    bests, corrects, exceeded, spend = [], [], [], np.zeros(4)
    unit = prompts_of(unit)
    for index in range(task.start, task.stop):
        key = [seed, budget, index] if task.part == 0 else [seed, budget, index, PART_STREAMS, task.part]
        source = BankSource(unit[index - first], task.repeats, np.random.default_rng(key),
                            tokens=task.tokens, token_rng=np.random.default_rng(key + [3]))
        policy = cls(task.played, task.repeats, task.config, rng=np.random.default_rng(key + [1]),
                     true_value=source.true_value)
        ledger = run_episodes(policy, source)
        bests.append(ledger.best_reward)
        # a prompt whose rollouts are not graded, in a bank where others are, counts for no accuracy
        corrects.append(ledger.best_correct.astype(float) if ledger.has_correct else np.full(task.repeats, np.nan))
        exceeded.append(source.pool_exceeded())
        spend += _spend(ledger)
    return Played(np.stack(bests), np.stack(corrects), np.stack(exceeded), spend)


def _spend(ledger) -> np.ndarray:
    """Sums over the episodes of rollouts, generated tokens, reward-model tokens and reward-model items."""
    return np.array([ledger.spent.sum(), ledger.tokens.sum(), ledger.rm_tokens.sum(), ledger.scored.sum()], dtype=float)


def ceilings(chunk: list[BankPrompt] | BankSlice, first: int, budget: int, seed: int,
             samples: int = CEILING_SAMPLES, discovery_fraction: float = DISCOVERY_FRACTION) -> np.ndarray:
    """(P, 4): each prompt's clairvoyant ceiling at ``budget``, its paid-discovery ceiling over
    ``samples`` discoveries of ``discovery_fraction`` of the budget each, that estimate's variance
    (``pipeline.offline.ceilings``; the discoveries of prompt i draw from (seed, budget, i)), and its
    best-of-N value at ``budget``; the clairvoyant ceiling and best-of-N are exact."""
    prompts = prompts_of(chunk)
    out = np.empty((len(prompts), 4))
    for offset, prompt in enumerate(prompts):
        arms = PromptArms(prompt)
        rng = np.random.default_rng([seed, budget, first + offset])
        out[offset] = arms.clairvoyant(budget), *arms.paid_discovery(budget, rng, samples, discovery_fraction), prompt.bon_value(budget)
    return out


def bon_values(chunk: list[BankPrompt] | BankSlice, ns: list[int]) -> np.ndarray:
    """(P, len(ns)): each prompt's exact BoN value at each n."""
    prompts = prompts_of(chunk)
    return np.array([PoolCurve(p.rewards, p.prompt_weights()).expected_max(np.asarray(ns)) for p in prompts]).reshape(
        len(prompts), len(ns))


class LocalExecutor:
    """Runs tasks here, one after another (``--workers 1``): no Ray, no processes."""

    reads_files = False  # a bank's chunks are read once here and handed to each task

    def share(self, value):
        return value

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[object, object]]:
        for task in tasks:
            yield task.meta, task.function(*task.args)

    def close(self) -> None:
        pass
