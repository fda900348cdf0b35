"""Reward banks: Parquet and JSONL both ways without loss, readable by other tools, and states that
share a prefix read as one state whose root rollouts know it."""

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.offline.bank import read_bank, read_bank_rows, write_bank
from pipeline.offline.episodes import BankPrompt, BankSource, WorldSource
from pipeline.offline.responses import TokenModel
from pipeline.offline.worlds import make_world
from pipeline.search.protocol import ROOT, Request

ROWS = [
    {"prompt_id": "p0", "states": [[-1.5, 0.25, 3.0], [0.5]], "correct": [[False, True, True], [False]],
     "state_texts": ["12-3=9;", "12-3=8;"], "meta": {"state_tokens": 8}},
    {"prompt_id": "p1", "states": [[0.1, 0.2], [0.30000000000000004, 0.7], [1e-9]]},  # not float32: kept as float64
]


def test_a_bank_goes_to_parquet_and_back_without_changing_a_reward(tmp_path):
    jsonl, parquet, back = tmp_path / "b.jsonl", tmp_path / "b.parquet", tmp_path / "back.jsonl"
    write_bank(jsonl, ROWS)
    assert main(["convert-bank", str(jsonl), str(parquet)]) == 0
    assert main(["convert-bank", str(parquet), str(back)]) == 0
    assert back.read_text() == jsonl.read_text()  # byte for byte
    assert read_bank_rows(parquet) == ROWS


def test_a_parquet_suffix_in_capitals_is_parquet_both_ways(tmp_path):
    jsonl, upper = tmp_path / "b.jsonl", tmp_path / "b.PARQUET"
    write_bank(jsonl, ROWS)
    assert main(["convert-bank", str(jsonl), str(upper)]) == 0
    assert upper.read_bytes()[:4] == b"PAR1"  # Parquet's magic number, not a JSONL line
    assert read_bank_rows(upper) == ROWS


def test_slg_collect_writes_a_bank_named_in_capitals_in_its_format():
    from pipeline.jobs.config import is_jsonl_bank

    assert is_jsonl_bank("b.JSONL") and is_jsonl_bank("b.jsonl") and not is_jsonl_bank("bank")


def test_float32_rewards_are_stored_as_float32(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"prompt_id": "p", "states": [[-1.532867431640625, 0.5], [2.0]]}]  # a float32 reward model's scores
    write_bank(tmp_path / "b.parquet", rows)
    assert str(pq.read_schema(tmp_path / "b.parquet").field("rewards").type) == "list<element: float>"
    assert read_bank_rows(tmp_path / "b.parquet") == rows


def test_a_parquet_bank_loads_with_pyarrow_and_with_datasets(tmp_path):
    pa_dataset = pytest.importorskip("pyarrow.dataset")
    datasets = pytest.importorskip("datasets")
    write_bank(tmp_path / "b.parquet", ROWS)
    table = pa_dataset.dataset(tmp_path / "b.parquet").to_table()
    assert table.num_rows == 5 and table.column("prompt_id").to_pylist() == ["p0", "p0", "p1", "p1", "p1"]
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "b.parquet"), split="train")
    assert loaded[1]["rewards"] == [0.5] and loaded[0]["state_text"] == "12-3=9;" and loaded[2]["correct"] is None


def test_a_folder_of_shards_is_one_bank(tmp_path):
    folder = tmp_path / "bank"
    write_bank(folder / "part-00000.parquet", ROWS[:1])
    write_bank(folder / "part-00001.parquet", ROWS[1:])
    assert [p.prompt_id for p in read_bank(folder)] == ["p0", "p1"]


@pytest.mark.parametrize("row, match", [
    ({"prompt_id": "p", "states": [[1.0], [2.0]], "state_texts": ["a"]}, "one prefix string per state"),
    ({"prompt_id": "p", "states": [[1.0]], "state_texts": [3]}, "one prefix string per state"),
])
def test_bad_state_texts_are_refused_naming_the_prompt(tmp_path, row, match):
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=match):
        read_bank(path)


def test_states_with_one_prefix_are_one_state_and_root_rollouts_say_which():
    # slots 0 and 2 share a prefix: one state of weight 1/2 holding both pools
    bank = BankPrompt("p", [[0.0] * 4, [1.0] * 4, [0.0] * 4, [2.0] * 4], state_texts=["a", "b", "a", "c"])
    source = BankSource(bank, 3000, np.random.default_rng(0))
    first = source.draw(Request.uniform(ROOT, 4, 3000))
    second = source.draw(Request.uniform(ROOT, 3, 3000))
    index = np.concatenate([first.state_index, second.state_index], axis=1)
    rewards = np.concatenate([first.rewards, second.rewards], axis=1)
    for b in range(50):
        for k in range(7):
            same = [j for j in range(7) if rewards[b, j] == rewards[b, k]]  # rewards name the state here
            assert index[b, k] == min(same)  # the first root rollout through its state
    # the merged state is drawn half the time; a state continued by its index draws from its pool
    assert np.mean(rewards == 0.0) == pytest.approx(0.5, abs=0.01)  # 21000 draws: sd 0.0035
    continued = source.draw(Request.per_episode(index[:, 0], 5))
    assert (continued.rewards == rewards[:, :1]).all()


def test_a_replay_source_scores_prefixes_only_where_a_request_asks_and_no_reward_changes():
    """``Request.score_prefixes``: a bank's stored prefix scores (or a world's readings, from their
    own generator) come back for the new states of a request that asks, and nothing where it does not;
    the rewards drawn are the same either way."""
    bank = BankPrompt("p", [[0.0, 0.1], [1.0, 1.1], [2.0, 2.1]], state_texts=["a", "b", "c"], state_scores=[5.0, 6.0, 7.0])

    def two_roots(make_source, asks):
        source = make_source()
        return [source.draw(Request.uniform(ROOT, 4, 200, score_prefixes=ask)) for ask in asks]

    for make_source in (lambda: BankSource(bank, 200, np.random.default_rng(1)),
                        lambda: WorldSource(make_world("gaussian"), 200, np.random.default_rng(1), np.random.default_rng(2))):
        asked, not_asked = two_roots(make_source, (True, False)), two_roots(make_source, (False, True))
        assert asked[1].state_score is None and not_asked[0].state_score is None
        assert np.isfinite(asked[0].state_score).all() and np.isfinite(not_asked[1].state_score).all()
        for a, b in zip(asked, not_asked):
            assert np.array_equal(a.rewards, b.rewards) and np.array_equal(a.state_index, b.state_index)
    scores = two_roots(lambda: BankSource(bank, 200, np.random.default_rng(1)), (True,))[0]
    assert np.array_equal(scores.state_score, 5.0 + np.floor(scores.rewards))  # each its own state's stored score
    # a request that does not ask draws nothing from the world's prefix generator: the readings of a later
    # request that asks are those it would have had without it (what keeps replays the same to the bit)
    world = WorldSource(make_world("gaussian"), 200, np.random.default_rng(1), np.random.default_rng(2))
    before = world.prefix_rng.bit_generator.state
    world.draw(Request.uniform(ROOT, 4, 200))
    assert world.prefix_rng.bit_generator.state == before


def test_a_bank_replay_reads_a_states_prefix_once_when_a_request_that_asks_first_meets_it():
    """As the driver scores prefixes: a state that a request which does not ask met first is read by the
    first later request that asks and meets it, and by no other (whatever order a policy asks in)."""
    bank = BankPrompt("p", [[0.0, 0.1], [1.0, 1.1], [2.0, 2.1]], state_texts=["a", "b", "c"], state_scores=[5.0, 6.0, 7.0])
    tokens = TokenModel(prompt_tokens=32, state_tokens=8, mean_response_tokens=30, random_lengths=False)
    source, rows = BankSource(bank, 500, np.random.default_rng(3), tokens), np.arange(500)
    read = np.zeros((500, 3), dtype=bool)  # states whose prefix was read: met by a request that asked
    seen = np.zeros((500, 3), dtype=bool)  # states met by any request
    late = 0  # reads of states that a request which did not ask met first
    for ask in (False, True, True, False):
        drawn = source.draw(Request.uniform(ROOT, 2, 500, score_prefixes=ask))
        met = np.zeros((500, 3), dtype=bool)
        for k in range(2):
            met[rows, np.floor(drawn.rewards[:, k]).astype(int)] = True  # the rewards name the state
        new = met & ~read & ask
        late += (new & seen).sum()
        read, seen = read | new, seen | met
        # each rollout: the prompt's 32 tokens and its 30; each prefix read: the prompt's 32 and the state's 8
        assert (drawn.rm_tokens.sum(axis=1) == 2 * (32 + 30) + new.sum(axis=1) * (32 + 8)).all()
        assert drawn.prefix_reads is None if not ask else (drawn.prefix_reads.sum(axis=1) == new.sum(axis=1)).all()
    assert late > 400  # the case that matters, often: 3 (5/9)^2 = 0.93 an episode expected in the second request alone


def test_a_world_replay_reads_the_prefix_of_every_root_rollout_of_a_request_that_asks():
    """A world's every root rollout is a state of its own: each prefix is read once, where it is met."""
    tokens = TokenModel(prompt_tokens=32, state_tokens=8, mean_response_tokens=30, random_lengths=False)
    source = WorldSource(make_world("gaussian"), 50, np.random.default_rng(1), np.random.default_rng(2), tokens)
    for ask in (False, True, True):
        drawn = source.draw(Request.uniform(ROOT, 3, 50, score_prefixes=ask))
        assert (drawn.rm_tokens == (32 + 30) + ask * (32 + 8)).all()
        assert drawn.prefix_reads is None if not ask else drawn.prefix_reads.all()
