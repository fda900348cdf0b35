"""The driver's record of one (prompt, method, budget) search: its round, its ledger, its answer.

Pure bookkeeping, no engines and no Ray. A search takes its row of its policy's round of requests
(a policy plays the searches of its group, ``pipeline.distributed.policy_groups``), which become
slots (``count`` rollouts from one node) filled in as rewards arrive; it counts what it spent
(``Ledger``), keeps the best answer (``BestAnswer``: the single highest-reward rollout of all it
generated, ties to the one planned first) and the majority vote over graded answers
(``MajorityVote``), and turns all of that into its line of ``results.jsonl`` (``result_row``).
"""

from __future__ import annotations

import itertools
import math
import time
from array import array
from dataclasses import dataclass, field, fields

import numpy as np

from pipeline.distributed.contract import PromptInput, Rollout, StatePrefix
from pipeline.search.protocol import ROOT, BudgetExceededError, Rollouts
from pipeline.stats.prefix_signal import prefix_correlation


def node_name(node: int) -> str:
    """``root``, or ``sK`` for the state cut from root rollout K."""
    return "root" if node == ROOT else f"s{node}"


@dataclass(frozen=True)
class SearchSpec:
    """What to search: a prompt, the method's name in the results, the budget, the policy to run."""

    prompt: PromptInput
    method: str
    budget: int
    policy_class: type
    search_config: object


class Slot:
    """One request of a round: ``count`` rollouts from ``node``, filled in as scores arrive. A chunked
    slot (``max_new_tokens``) starts responses that grow, or (``grow``) continues response ``node``.
    ``score_prefixes``: the reward model also scores the prefix of each new state its rollouts reveal."""

    __slots__ = ("node", "count", "rewards", "can_branch", "correct", "root_index", "max_new_tokens", "grow", "finished",
                 "score_prefixes")

    def __init__(self, node: int, count: int, max_new_tokens: int | None = None, grow: bool = False,
                 score_prefixes: bool = False):
        self.node, self.count = node, count
        self.max_new_tokens, self.grow, self.score_prefixes = max_new_tokens, grow, score_prefixes
        # (np.empty + fill: np.full and np.ones are Python wrappers, a cost per slot that a chunk a slot feels)
        self.rewards = np.empty(count)
        self.rewards.fill(np.nan)
        self.can_branch = np.zeros(count, dtype=bool)
        self.correct = np.zeros(count, dtype=bool)
        self.root_index = np.empty(count, dtype=np.int64)  # the root-rollout index of each rollout that can branch (or grows)
        self.root_index.fill(-1)
        self.finished = np.empty(count, dtype=bool)  # False: a partial response (chunked slots)
        self.finished.fill(True)


ROW_FIELDS = ("rollouts", "tokens_generated", "prompt_tokens", "cached_prompt_tokens", "rm_tokens", "empty_rollouts",
              "dropped_scores")  # what a search's line of results.jsonl reports of its ledger, in this order


@dataclass
class Ledger:
    """What one search spent (rollouts and tokens, rollouts that went wrong), or, summed, a whole run:
    the one place where rollouts and tokens are counted (``Driver.progress`` adds the ledgers up)."""

    rollouts: int = 0
    tokens_generated: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    rm_tokens: int = 0
    empty_rollouts: int = 0
    dropped_scores: int = 0  # non-finite rewards dropped (reward.nonfinite=drop)
    rollouts_scored: int = 0
    state_prompt_tokens: int = 0   # prompt tokens of rollouts from states, and their cached part:
    state_cached_tokens: int = 0   # how well the prefix cache serves states
    prefixes_scored: int = 0       # the reward model's reads of a state's prefix alone (slg_share)

    def add_rollout(self, rollout: Rollout, from_state: bool, new_response: bool = True) -> None:
        """``new_response`` False: a chunk continuing a response, which is not another rollout (its tokens count)."""
        self.rollouts += new_response
        self.tokens_generated += rollout.num_generated_tokens
        self.prompt_tokens += rollout.num_prompt_tokens
        self.cached_prompt_tokens += rollout.num_cached_tokens
        self.empty_rollouts += rollout.num_generated_tokens == 0
        if from_state:
            self.state_prompt_tokens += rollout.num_prompt_tokens
            self.state_cached_tokens += rollout.num_cached_tokens

    def add_score(self, num_tokens: int) -> None:
        self.rollouts_scored += 1
        self.rm_tokens += num_tokens

    def __add__(self, other: Ledger) -> Ledger:
        return Ledger(*(getattr(self, name) + getattr(other, name) for name in LEDGER_FIELDS))

    def row(self) -> dict:
        return {name: getattr(self, name) for name in ROW_FIELDS}


LEDGER_FIELDS = tuple(f.name for f in fields(Ledger))  # astuple deep-copies: Driver.progress adds ledgers at every step


@dataclass
class BestAnswer:
    """The highest-reward rollout so far; among equal rewards, the one planned first."""

    reward: float = -math.inf
    sequence: int = 0
    text: str | None = None
    correct: bool | None = None
    node: int | None = None

    def offer(self, reward: float, sequence: int, text: str, correct: bool | None, node: int) -> None:
        if (reward, -sequence) > (self.reward, -self.sequence):
            self.reward, self.sequence, self.text, self.correct, self.node = reward, sequence, text, correct, node


@dataclass
class _Tally:
    count: int
    first_sequence: int
    correct: bool | None  # graded once: every rollout with this answer has the same verdict


@dataclass
class MajorityVote:
    """Votes of the graded answers; the winner has the most votes, ties to the answer seen first."""

    tallies: dict[str, _Tally] = field(default_factory=dict)

    def add(self, answer: str, sequence: int, correct: bool | None) -> None:
        tally = self.tallies.get(answer)
        if tally is None:
            self.tallies[answer] = _Tally(1, sequence, correct)
        else:
            tally.count += 1
            tally.first_sequence = min(tally.first_sequence, sequence)

    def winner(self) -> tuple[str, _Tally] | None:
        return max(self.tallies.items(), key=lambda kv: (kv[1].count, -kv[1].first_sequence), default=None)


class SearchRecord:
    """One search in flight: its group's policy (episode ``row`` of it), the slots of its current round,
    and what it found."""

    def __init__(self, spec: SearchSpec, answers_vote: bool = True, row: int = 0):
        self.spec = spec
        # the group whose policy it shares (``pipeline.distributed.policy_groups``), and its episode there
        self.group, self.row = None, row
        self.answers_vote = answers_vote  # False: the generator reads no answers (sim), so there is no vote
        self.prompt, self.method, self.budget = spec.prompt, spec.method, spec.budget
        self.order = 0               # its place in the driver's admission order
        self.root_count = 0          # root rollouts planned so far: the next one's index
        self.requested = 0
        self.node_counts: dict[int, int] = {}  # rollouts planned per state (the next one's index there): the states sampled
        self.states: dict[int, StatePrefix] = {}  # root-rollout index -> the state cut from it
        # prefix token ids -> the smallest root-rollout index that has them: root rollouts with the same
        # prefix are one state (``Rollouts.state_index``); by index, not arrival, so the same whatever the timing
        self.first_root: dict[tuple, int] = {}
        # root-rollout index -> its partial response so far (every token), for chunked policies; and
        # the chunks asked of each (the next chunk's index: its seed)
        self.partials: dict[int, StatePrefix] = {}
        self.chunk_counts: dict[int, int] = {}
        # prefix token ids -> the reward model's score of the prefix alone (NaN: not finite), for the
        # requests that ask for them (``Request.score_prefixes``); None while its score is on its way
        self.prefix_scores: dict[tuple, float | None] = {}
        # each root rollout of those requests: its state prefix score (NaN where it revealed no state)
        # and its reward, the row's ``prefix_correlation`` (rollouts from a state have no pair)
        self.prefix_pair_scores: list[np.ndarray] = []
        self.prefix_pair_rewards: list[np.ndarray] = []
        self.slots: list[Slot] = []
        self.waiting = 0             # rollouts of this round not scored yet
        self.sequence = itertools.count()
        self.started = time.perf_counter()
        self.ledger = Ledger()
        self.best = BestAnswer()
        self.any_correct: bool | None = None
        self.votes = MajorityVote()

    def take_round(self, requests: list) -> list[Slot]:
        """Its row (``row``) of the policy's next round (``Request``s) as slots; refuses overspending."""
        row = self.row
        self.slots = [Slot(int(r.node[row]), int(r.count[row]), r.max_new_tokens, r.grow, r.score_prefixes) for r in requests]
        self.requested += sum(slot.count for slot in self.slots if not slot.grow)  # a chunk is no new rollout
        if self.requested > self.budget:
            raise BudgetExceededError(f"{self.method} asked for {self.requested} rollouts of prompt "
                                      f"{self.prompt.prompt_id!r}, budget is {self.budget}")
        self.waiting = sum(slot.count for slot in self.slots)
        return self.slots

    def plan_rollout(self, node: int, grow: bool = False) -> tuple[int, int | None, StatePrefix | None]:
        """(index within the node, root-rollout index or None, state or None) of the next rollout from
        ``node``; with ``grow``, of the next chunk of response ``node`` (its partial response as the state)."""
        if grow:
            if node not in self.partials:
                raise RuntimeError(f"policy asked to continue response {node}, which is not a partial response")
            index = self.chunk_counts.get(node, 0)
            self.chunk_counts[node] = index + 1
            return index, None, self.partials[node]
        if node == ROOT:
            index = self.root_count
            self.root_count += 1
            return index, index, None
        if node not in self.states:
            raise RuntimeError(f"policy asked to continue state {node}, which is not a state")
        index = self.node_counts.get(node, 0)
        self.node_counts[node] = index + 1
        return index, None, self.states[node]

    def record_rollout(self, rollout: Rollout, slot: Slot, position: int, root_index: int | None) -> None:
        self.ledger.add_rollout(rollout, from_state=slot.node != ROOT, new_response=not slot.grow)
        if slot.max_new_tokens is not None:  # a chunk: the response so far is its every token
            response = slot.node if slot.grow else root_index
            slot.finished[position] = rollout.finished
            slot.root_index[position] = response
            if rollout.finished:
                self.partials.pop(response, None)
            else:  # int32 ids: sent whole with every chunk, an array pickles 4x faster than a tuple
                tokens = array("i", self.partials[response].token_ids if slot.grow else ())
                tokens.extend(rollout.token_ids)
                self.partials[response] = StatePrefix(tokens, rollout.response_text)
            return
        if root_index is not None and rollout.state is not None:
            self.states[root_index] = rollout.state
            if root_index < self.first_root.get(rollout.state.token_ids, root_index + 1):
                self.first_root[rollout.state.token_ids] = root_index
            slot.can_branch[position] = True
            slot.root_index[position] = root_index

    def wants_prefix_score(self, slot: Slot, state: StatePrefix | None) -> bool:
        """Whether the slot asks for prefix scores and this state (None: the rollout is too short to
        be one) has none yet (nor one on its way)."""
        if not slot.score_prefixes or state is None or state.token_ids in self.prefix_scores:
            return False
        self.prefix_scores[state.token_ids] = None
        return True

    def record_prefix_score(self, token_ids: tuple, score: float, num_tokens: int) -> None:
        self.prefix_scores[token_ids] = score if math.isfinite(score) else math.nan
        self.ledger.rm_tokens += num_tokens
        self.ledger.prefixes_scored += 1

    def record_reward(self, reward: float, rollout: Rollout, slot: Slot, position: int, sequence: int) -> None:
        slot.rewards[position] = reward
        if not slot.finished[position]:  # a partial response's score: no answer, no vote, no grade
            return
        if rollout.correct is not None:
            slot.correct[position] = rollout.correct
            self.any_correct = bool(self.any_correct) or rollout.correct
        if rollout.answer is not None:
            self.votes.add(rollout.answer, sequence, rollout.correct)
        self.best.offer(reward, sequence, rollout.response_text, rollout.correct, slot.node)

    def _prefix_correlation(self) -> float | None:
        """Over the root rollouts whose prefixes the policy asked to score, the correlation of their
        state prefix scores and rewards (``pipeline.stats.prefix_signal``); None where no request
        asked, or where it is undefined."""
        if not self.prefix_pair_scores:
            return None
        value = prefix_correlation(np.concatenate(self.prefix_pair_scores), np.concatenate(self.prefix_pair_rewards))
        return value if math.isfinite(value) else None

    def round_results(self) -> list[Rollouts]:
        first = self.first_root
        results = []
        for s in self.slots:
            if s.max_new_tokens is not None:  # responses that grow: each is its own (no prefix lookup)
                results.append(Rollouts(s.rewards[None, :], s.can_branch[None, :], s.correct[None, :],
                                        s.root_index[None, :], None, s.finished[None, :]))
                continue
            if s.node != ROOT:  # rollouts from a state reveal no state: every index is -1, as root_index holds
                results.append(Rollouts(s.rewards[None, :], s.can_branch[None, :], s.correct[None, :],
                                        s.root_index[None, :], np.full((1, s.count), np.nan) if s.score_prefixes else None))
                continue
            prefixes = [self.states[k].token_ids if k >= 0 else None for k in s.root_index.tolist()]
            index = np.array([first[p] if p is not None else -1 for p in prefixes])
            score = None
            if s.score_prefixes:
                score = np.array([self.prefix_scores.get(p) if p is not None else math.nan for p in prefixes], dtype=float)
                self.prefix_pair_scores.append(score)  # NaN where a root rollout was too short to cut a state
                self.prefix_pair_rewards.append(s.rewards)
            results.append(Rollouts(s.rewards[None, :], s.can_branch[None, :], s.correct[None, :], index[None, :],
                                    None if score is None else score[None, :]))
        return results

    def result_row(self) -> dict:
        """The search's line of results.jsonl."""
        policy = self.group.policy
        prediction = float(policy.selected_prediction[self.row])
        majority = self.votes.winner()
        best = self.best
        return {
            "prompt_id": self.prompt.prompt_id, "method": self.method, "budget": self.budget,
            **self.ledger.row(),
            "best_reward": best.reward if math.isfinite(best.reward) else None,
            "selected": node_name(int(policy.selected[self.row])),
            "predicted_value": prediction if math.isfinite(prediction) else None,
            "num_states": len(self.node_counts),  # states the search sampled from (0 for BoN)
            "correct": best.correct, "pass_at_n": self.any_correct,
            "majority_answer": None if majority is None else majority[0],
            # graded rollouts but no readable answer among them: the vote has no right answer
            "majority_correct": majority[1].correct if majority is not None else
            (False if self.any_correct is not None and self.answers_vote else None),
            "best_node": None if best.node is None else node_name(best.node),
            "prefix_correlation": self._prefix_correlation(),
            "answer": best.text,
            "wall_s": time.perf_counter() - self.started,
        }

