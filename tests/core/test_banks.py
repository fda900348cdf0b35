"""Reward banks: Parquet and JSONL both ways without loss, readable by other tools, and states that
share a prefix read as one state whose root rollouts know it."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.offline.bank import read_bank, read_bank_rows, write_bank
from pipeline.offline.episodes import BankPrompt, BankSource, WorldSource
from pipeline.offline.responses import TokenModel
from pipeline.offline.worlds import make_world
from pipeline.search.protocol import ROOT, Request

REPOSITORY = Path(__file__).resolve().parents[2]
# a row of docs/toy-models.md's table of shipped banks: | `path` | ... N problems ... | S x M | T characters | yes |
BANK_ROW = re.compile(r"^\| `(data/[\w/]+\.(?:parquet|jsonl))` \| \D*?(\d+)[^|]* \| (\d+) x (\d+) \| (\d+) characters \| (yes|no) \|$")

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


class CountedRow(dict):
    """A bank row whose life a test can follow (a plain dict cannot be weakly referenced)."""

    __slots__ = ("__weakref__",)


# the rows still held as the next is drawn: JSONL the line being written; Parquet the chunk being
# written (two prompts) and the first of the one being gathered; never the 50 prompts of the bank
@pytest.mark.parametrize("name, held", [("b.jsonl", 1), ("b.parquet", 3)])
def test_a_bank_is_written_as_its_rows_are_drawn_holding_a_chunk_not_the_bank(tmp_path, monkeypatch, name, held):
    import weakref

    from pipeline.offline import parquet_writer

    monkeypatch.setattr(parquet_writer, "CHUNK_REWARDS", 800)  # 400 rewards a prompt: a Parquet chunk is two prompts

    def states(p):
        return [[p + k / 1000 for k in range(200)], [p - k / 1000 for k in range(200)]]

    drawn, most_held, written_before_last = [], 0, 0

    def rows():
        nonlocal most_held, written_before_last
        for p in range(50):
            most_held = max(most_held, sum(ref() is not None for ref in drawn))
            if p == 49:  # the bytes of the first 48 prompts are on disk, under a temporary name
                assert not (tmp_path / name).exists()
                written_before_last = sum(f.stat().st_size for f in tmp_path.glob(f".{name}*"))
            row = CountedRow(prompt_id=f"p{p}", states=states(p))
            drawn.append(weakref.ref(row))
            yield row

    write_bank(tmp_path / name, rows())
    assert most_held == held
    assert written_before_last > (tmp_path / name).stat().st_size / 2
    assert read_bank_rows(tmp_path / name) == [{"prompt_id": f"p{p}", "states": states(p)} for p in range(50)]


@pytest.mark.parametrize("name, duplicate", [("b.jsonl", "duplicate prompt_id 'p1'"),
                                             ("b.parquet", "the states of prompt 'p1' are not consecutive")])
def test_a_bank_is_validated_as_it_is_read_and_a_bad_last_prompt_keeps_the_old_copy(tmp_path, name, duplicate):
    """convert-bank validates each prompt as it reads it: the first is in hand before the last is read,
    and a bad last prompt refuses the conversion, with exit 2, leaving the copy written before as it was."""
    from pipeline.errors import ConfigError
    from pipeline.offline.bank import bank_rows

    rows = [{"prompt_id": f"p{i}", "states": [[float(i), 0.5], [1.5, 2.5]]} for i in range(6)]
    write_bank(tmp_path / name, rows + [{"prompt_id": "p1", "states": [[0.0]]}])
    reading = bank_rows(tmp_path / name)
    assert next(reading) == rows[0]
    with pytest.raises(ConfigError, match=duplicate):
        list(reading)
    copy = tmp_path / ("copy.parquet" if name.endswith(".jsonl") else "copy.jsonl")
    write_bank(copy, rows[:1])
    before = copy.read_bytes()
    assert main(["convert-bank", str(tmp_path / name), str(copy)]) == 2
    assert copy.read_bytes() == before
    assert main(["convert-bank", str(tmp_path / name), str(tmp_path / "new" / "folders" / copy.name)]) == 2
    assert main(["convert-bank", str(tmp_path / name), str(tmp_path / "made" / ".." / "other" / copy.name)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, copy.name])  # no temporary file, nor folder, left


@pytest.mark.parametrize("source, copy", [("b.jsonl", "c.parquet"), ("b.parquet", "c.jsonl")])
def test_converting_a_bank_holds_a_few_prompts_not_the_bank(tmp_path, monkeypatch, source, copy):
    """convert-bank reads a JSONL line or a Parquet row group at a time, and writes as it reads: its peak
    of Python memory is a small part of what the bank takes read whole (it read whole banks before)."""
    import tracemalloc

    from pipeline.offline import parquet_writer

    # row groups of 2 prompts, chunks of 8, in a bank of 200 (the writer holds a chunk, the reader a group)
    monkeypatch.setattr(parquet_writer, "ROW_GROUP_REWARDS", 400)
    monkeypatch.setattr(parquet_writer, "CHUNK_REWARDS", 1600)
    write_bank(tmp_path / source, [{"prompt_id": f"p{i}", "states": [[i + k / 7 for k in range(100)]] * 2} for i in range(200)])
    assert main(["convert-bank", str(tmp_path / source), str(tmp_path / copy)]) == 0  # imports done before measuring

    def peak(work) -> int:
        tracemalloc.start()
        try:
            work()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    whole = peak(lambda: read_bank_rows(tmp_path / source))
    converting = peak(lambda: main(["convert-bank", str(tmp_path / source), str(tmp_path / copy)]))
    assert converting < whole / 4
    assert read_bank_rows(tmp_path / copy) == read_bank_rows(tmp_path / source)


def test_a_later_chunk_that_needs_float64_or_texts_rewrites_the_parquet_bank_in_the_wider_schema(tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    from pipeline.offline import parquet_writer

    monkeypatch.setattr(parquet_writer, "CHUNK_REWARDS", 1)  # a chunk a prompt
    rows = [{"prompt_id": "a", "states": [[0.5, 1.5], [2.0]]},  # float32 exactly: the first chunk's schema
            {"prompt_id": "b", "states": [[0.1]]},  # not a float32: the rewards become float64
            {"prompt_id": "c", "states": [[1.0]], "responses": [["1+1=2"]]},  # texts: a responses column
            {"prompt_id": "d", "states": [[0.25]]}]  # float32 and no texts again: cast into the wide schema
    write_bank(tmp_path / "b.parquet", rows)
    schema = pq.read_schema(tmp_path / "b.parquet")
    assert str(schema.field("rewards").type) == "list<element: double>" and "responses" in schema.names
    assert read_bank_rows(tmp_path / "b.parquet") == rows
    assert [p.name for p in tmp_path.iterdir()] == ["b.parquet"]  # no temporary file left
    write_bank(tmp_path / "c.parquet", [rows[0], rows[3]])
    assert str(pq.read_schema(tmp_path / "c.parquet").field("rewards").type) == "list<element: float>"


def test_a_bank_whose_rows_fail_midway_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from pipeline.offline import parquet_writer

    monkeypatch.setattr(parquet_writer, "CHUNK_REWARDS", 1)

    def failing():
        yield from ROWS
        raise RuntimeError("drawing failed")

    for name in ("b.jsonl", "b.parquet"):
        write_bank(tmp_path / name, ROWS[:1])
        before = (tmp_path / name).read_bytes()
        with pytest.raises(RuntimeError, match="drawing failed"):
            write_bank(tmp_path / name, failing())
        assert (tmp_path / name).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.jsonl", "b.parquet"]
    # interrupted while rewriting in a wider schema (ROWS[1] is not float32): no file of that left either
    opened, parquet_writer_of = [], parquet_writer._parquet_writer
    monkeypatch.setattr(parquet_writer, "_parquet_writer",
                        lambda *a: parquet_writer_of(*a) if not opened.append(a) and len(opened) == 1 else 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_bank(tmp_path / "b.parquet", ROWS)
    assert len(opened) == 2 and (tmp_path / "b.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.jsonl", "b.parquet"]


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


def test_line_separators_inside_strings_are_not_line_ends(tmp_path, capsys):
    """JSON written with ensure_ascii=False may hold U+2028, U+2029 or U+0085 raw inside a string;
    str.splitlines() ends lines there, and replay failed on such a bank after its validating pass."""
    rows = [{**ROWS[0], "state_texts": ["12\u2028-3", "12\u0085-3\u2029"]}, {**ROWS[1], "prompt_id": "p\u20281"}]
    bank = tmp_path / "b.jsonl"
    bank.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    assert main(["replay", "--bank", str(bank), "--budgets", "2", "--methods", "bon,slg_share", "--repeats", "2",
                 "--no-ceilings", "--workers", "1"]) == 0
    assert main(["predict", "--rewards", str(bank), "--n", "4"]) == 0
    assert main(["convert-bank", str(bank), str(tmp_path / "b.parquet")]) == 0
    assert read_bank_rows(tmp_path / "b.parquet") == rows


def test_accuracy_counts_the_graded_prompts_of_a_bank_that_grades_some(tmp_path):
    """A bank whose prompts are graded in part (a data set with answers for some problems): replay
    stacked the prompts' grades and failed (exit 1) after its work; accuracy is over the graded ones."""
    rows = [{"prompt_id": "right", "states": [[0.1, 0.2], [0.3]], "correct": [[True, True], [True]]},
            {"prompt_id": "ungraded", "states": [[0.5, 0.6], [0.7]]}]
    write_bank(tmp_path / "b.jsonl", rows)
    assert main(["replay", "--bank", str(tmp_path / "b.jsonl"), "--budgets", "2", "--methods", "bon", "--repeats", "3",
                 "--no-ceilings", "--workers", "1", "--out", str(tmp_path / "r.json")]) == 0
    (result,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert result["accuracy"] == 1.0  # not 0.5: the ungraded prompt is not a wrong one
    write_bank(tmp_path / "b.jsonl", rows[1:])
    assert main(["replay", "--bank", str(tmp_path / "b.jsonl"), "--budgets", "2", "--methods", "bon", "--repeats", "3",
                 "--no-ceilings", "--workers", "1", "--out", str(tmp_path / "r.json")]) == 0
    (result,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert result["accuracy"] is None  # a bank that grades nothing has no accuracy, not 0


def test_json_nested_past_the_parsers_depth_is_bad_input(tmp_path, capsys):
    bank = tmp_path / "deep.jsonl"
    bank.write_text('{"prompt_id": "p", "states": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    for argv in (["replay", "--bank", str(bank), "--budgets", "2"], ["predict", "--rewards", str(bank), "--n", "2"]):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().endswith("line 1: not valid JSON (nested too deeply)")


def test_a_jsonl_bank_changed_after_its_scan_is_refused_naming_the_prompt(tmp_path):
    """A replay reads each chunk of a JSONL bank again where it plays it: a bank rewritten meanwhile
    (a collect into it, an edit) is bad input naming the prompt, not a traceback."""
    from pipeline.errors import ConfigError
    from pipeline.offline.bank_reader import StreamedBank

    bank = tmp_path / "bank.jsonl"
    write_bank(bank, ROWS)
    streamed = StreamedBank(bank)
    text = bank.read_text()
    bank.write_text("{" + "x" * (len(text) - 3) + "\n\n")  # as long as before: the slices' byte ranges still fit
    with pytest.raises(ConfigError, match=r"changed after it was read \(prompts 1-2\): 1 lines where it had 2"):
        next(streamed.chunks())
    bank.write_text(text.replace("\n", " ", 1))  # one line where there were two, each JSON
    with pytest.raises(ConfigError, match=r"changed after it was read"):
        next(streamed.chunks())
    bank.write_text(text[:-2] + "x\n")  # the last line no longer JSON
    with pytest.raises(ConfigError, match=r"^bank bank.jsonl prompt 2: not valid JSON"):
        next(streamed.chunks())
    bank.write_bytes(b"\xff" * len(text.encode()))  # not UTF-8
    with pytest.raises(ConfigError, match=r"changed after it was read \(prompts 1-2\): 'utf-8' codec"):
        next(streamed.chunks())
    bank.unlink()
    with pytest.raises(ConfigError, match=r"changed after it was read \(prompts 1-2\): No such file"):
        next(streamed.chunks())


@pytest.mark.parametrize("columns, match", [
    ({"correct": [True, False, True]}, "column 'correct' must be lists of true/false, got bool"),
    ({"correct": [[1, 0], [1], [0]]}, "column 'correct' must be lists of true/false, got list<element: int64>"),
    ({"state_score": ["0.5", "1", "2"]}, "column 'state_score' must be a number, got string"),
    ({"state_text": [["a"], ["b"], ["c"]]}, "column 'state_text' must be a string, got list<element: string>"),
    ({"prompt_id": [0.0, 0.0, 1.0]}, "column 'prompt_id' must be a string, got double"),
    ({"meta": [1, None, None]}, "column 'meta' must be JSON text, got int64"),
    ({"meta": ["{not json", None, None]}, "prompt 'p0': 'meta' is not valid JSON text"),  # convert-bank reads meta
])
def test_a_parquet_column_of_another_type_is_refused_naming_it(tmp_path, capsys, columns, match):
    """Replay's reader once raised AttributeError or TypeError on these (exit 1), or read them as
    something (a nested correct as accuracy 1.0); convert-bank's raised on a bad meta."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = {"prompt_id": ["p0", "p0", "p1"], "rewards": [[0.1, 0.2], [0.3], [0.5, 0.6]], **columns}
    pq.write_table(pa.table(table), tmp_path / "b.parquet")
    argv = ["convert-bank", str(tmp_path / "b.parquet"), str(tmp_path / "b.jsonl")]
    if "meta" not in columns or "got" in match:
        argv = ["replay", "--bank", str(tmp_path / "b.parquet"), "--budgets", "2", "--repeats", "1", "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("prompt_ids, state_texts", [
    (["p0", "p0"], [None, None]),  # a column of nulls only
    ("large_string", ["a", "b"]),
    ("dictionary", ["a", "b"]),  # a pandas Categorical
    ("string_view", ["a", "b"]),
])
def test_other_arrow_types_of_the_bank_types_are_read_as_them(tmp_path, prompt_ids, state_texts):
    """Banks that pandas or other tools write: large, dictionary-encoded and view types of strings
    and lists, a column of nulls, and a `state` column of floats (an int column with a NaN in pandas),
    which no reader takes."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    ids = pa.array(["p0", "p0"])
    if prompt_ids == "large_string":
        ids = ids.cast(pa.large_string())
    elif prompt_ids == "dictionary":
        ids = ids.dictionary_encode()
    elif prompt_ids == "string_view":
        if not hasattr(pa, "string_view"):
            pytest.skip("pyarrow < 16 has no string_view")
        ids = ids.cast(pa.string_view())
    texts = pa.array(state_texts, type=pa.null()) if state_texts[0] is None else pa.array(state_texts).dictionary_encode()
    table = pa.table({"prompt_id": ids, "state": pa.array([0.0, float("nan")]),
                      "rewards": pa.array([[0.5, 0.25], [1.0]], type=pa.large_list(pa.float32())), "state_text": texts})
    pq.write_table(table, tmp_path / "b.parquet")
    (prompt,) = read_bank(tmp_path / "b.parquet")
    assert prompt.prompt_id == "p0" and [list(s) for s in prompt.state_rewards] == [[0.5, 0.25], [1.0]]
    assert read_bank_rows(tmp_path / "b.parquet")[0].get("state_texts") == (None if state_texts[0] is None else state_texts)


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


def shipped_bank_rows():
    rows = [BANK_ROW.match(line) for line in (REPOSITORY / "docs" / "toy-models.md").read_text().splitlines()]
    return [row.groups() for row in rows if row]


def test_the_docs_table_lists_every_shipped_bank():
    listed = {path for path, *_ in shipped_bank_rows()}
    shipped = {str(p.relative_to(REPOSITORY)) for p in (REPOSITORY / "data" / "banks").glob("*.parquet")}
    assert shipped <= listed and "data/toy_bank/bank.jsonl" in listed


@pytest.mark.parametrize("path, problems, states, completions, depth, scored", shipped_bank_rows())
def test_a_shipped_bank_holds_what_the_docs_table_says(path, problems, states, completions, depth, scored):
    """Each shipped bank as docs/toy-models.md lists it: its problems, states x completions (every state's
    pool whole; a prompt whose root rollouts ended before T characters has fewer states), the state depth
    it was collected at, and prefix scores where it says so. A truncated or mislabelled bank fails here,
    not in a replay that quietly redraws a short pool."""
    rows = read_bank_rows(REPOSITORY / path)
    assert len(rows) == int(problems)
    assert max(len(row["states"]) for row in rows) == int(states)
    for row in rows:
        assert all(len(rewards) == int(completions) for rewards in row["states"])
        assert row["meta"]["state_tokens"] == int(depth) and row["meta"]["completions"] == int(completions)
        assert ("state_scores" in row and all(np.isfinite(row["state_scores"]))) == (scored == "yes")
