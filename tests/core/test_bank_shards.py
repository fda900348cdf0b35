"""Banks at scale without Ray: collect's Parquet shards (written by the real bank writer from an
in-process driver's results), their metadata and resumption, other tools reading them, lossless
conversion both ways, and the streamed reader that replay uses (chunks of a few prompts); a JSONL
bank's lines in the data's order, whatever order its prompts finish in."""

import json

import numpy as np
import pytest
from conftest import require, run_in_process

from actors.sim import _SimWorld
from pipeline.cli import main
from pipeline.distributed.contract import StatePrefix
from pipeline.distributed.driver import rollout_seed
from pipeline.errors import ConfigError
from pipeline.jobs.bank_writers import JsonlBank, ParquetShards
from pipeline.jobs.collection import SampleRecorder, bank_row, texts_row
from pipeline.jobs.config import load_run_config
from pipeline.jobs.prompts import load_prompts
from pipeline.offline import bank_reader
from pipeline.offline.bank import read_bank, read_bank_rows, write_bank
from pipeline.offline.bank_reader import StreamedBank

SIZES = ["collect.num_states=3", "collect.completions_per_state=5", "data.num_prompts=5", "collect.prompts_per_shard=2",
         "generator.sim.family=bimodal"]


def collect_shards(folder, overrides=SIZES, keep_texts=False, finish=None):
    """Shards of ``folder`` from an in-process collect (no Ray); ``finish``: how many results reach the writer."""
    overrides = [*overrides, f"collect.out={folder}", *(["collect.responses=true"] if keep_texts else [])]
    config = load_run_config(None, overrides)
    results = run_in_process(overrides, SampleRecorder(keep_texts), collect=True)  # float64: the writer makes them float32
    with ParquetShards(config, load_prompts(config.data), bank_row) as writer:
        writer.write(results[:finish])
    return config, results


def test_collect_shards_hold_each_state_s_rewards_as_the_sim_draws_them_in_float32(tmp_path):
    config, _ = collect_shards(tmp_path / "bank")
    assert sorted(p.name for p in (tmp_path / "bank").iterdir()) == ["part-00000.parquet", "part-00001.parquet",
                                                                      "part-00002.parquet"]
    rows = read_bank_rows(tmp_path / "bank")
    assert [r["prompt_id"] for r in rows] == [f"sim{i}" for i in range(5)]
    world = _SimWorld("bimodal", {})
    for row in rows:
        assert [len(s) for s in row["states"]] == [5, 5, 5] and len(row["correct"]) == 3
        for name, rewards in zip(row["meta"]["state_nodes"], row["states"]):
            root_seed = rollout_seed(config.seed, row["prompt_id"], "root", int(name[1:]))
            drawn = [world.draw(rollout_seed(config.seed, row["prompt_id"], name, i), StatePrefix((root_seed,)))[1]
                     for i in range(5)]
            assert rewards == np.float32(drawn).astype(float).tolist()  # the sim's float64 draws, to float32


def test_shards_say_what_they_came_from_and_a_rerun_skips_them_or_refuses_another_config(tmp_path):
    import pyarrow.parquet as pq

    config, results = collect_shards(tmp_path / "bank", finish=3)  # prompts 0-2 finished: shard 0 whole, shard 1 not
    assert [p.name for p in (tmp_path / "bank").iterdir()] == ["part-00000.parquet"]
    metadata = json.loads(pq.read_schema(tmp_path / "bank" / "part-00000.parquet").metadata[b"slg.bank"])
    assert metadata["shard"] == {"index": 0, "of": 3, "prompts": ["sim0", "sim1"]}
    assert metadata["prompts"] == ["sim0", "sim1"]  # where formats.md puts them
    assert metadata["seed"] == 0 and metadata["models"] == {"generator": "sim:bimodal", "reward": "sim"}
    assert metadata["config"]["collect"]["completions_per_state"] == 5
    again = ParquetShards(config, load_prompts(config.data), bank_row)
    assert [p.prompt_id for p in again.pending(load_prompts(config.data))] == ["sim2", "sim3", "sim4"]
    other = load_run_config(None, [*SIZES, f"collect.out={tmp_path / 'bank'}", "seed=1"])
    with pytest.raises(ConfigError, match=r"another config \(changed: seed\); use another --out"):
        ParquetShards(other, load_prompts(other.data), bank_row)
    shard = tmp_path / "bank" / "part-00000.parquet"  # a shard of a newer format: not one to extend
    table = pq.read_table(shard)
    pq.write_table(table.replace_schema_metadata({b"slg.bank": json.dumps({**metadata, "format_version": 2})}), shard)
    with pytest.raises(ConfigError, match="is in bank format 2; this slg reads format 1"):
        ParquetShards(config, load_prompts(config.data), bank_row)


def test_a_rerun_after_a_kill_ends_with_the_bank_of_an_uninterrupted_run(tmp_path):
    collect_shards(tmp_path / "whole")
    config, results = collect_shards(tmp_path / "killed", finish=3)
    (tmp_path / "killed" / ".part-00009.parquet.tmp").write_bytes(b"torn")  # a kill in the middle of a write
    prompts = load_prompts(config.data)
    with ParquetShards(config, prompts, bank_row) as writer:
        pending = {p.prompt_id for p in writer.pending(prompts)}
        writer.write([r for r in results if r["prompt_id"] in pending])
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert read_bank_rows(tmp_path / "killed") == read_bank_rows(tmp_path / "whole")


def test_parquet_shards_refuse_a_prompt_that_finishes_twice(tmp_path):
    config = load_run_config(None, [*SIZES, f"collect.out={tmp_path / 'bank'}"])
    results = run_in_process(SIZES, SampleRecorder(False), collect=True)
    with ParquetShards(config, load_prompts(config.data), bank_row) as writer:
        writer.write(results[:3])  # shard 0 (sim0, sim1) is written; sim2 waits for sim3 in shard 1
        for index in (1, 2):  # a second finish of a written prompt, and of a waiting one
            with pytest.raises(ValueError, match=f"prompt 'sim{index}' finished twice, or was not asked for"):
                writer.write([results[index]])


def write_jsonl_bank(folder, results, finishing_order, waiting_at_exit=()):
    """A JSONL bank and its side file in ``folder``, from ``results`` reaching the writer one at a
    time in ``finishing_order`` (indices; a prompt already in the bank is skipped, as collect does).
    Checks that each prompt's side line goes out before its bank line, and which prompts the writer
    still holds at its exit."""
    config = load_run_config(None, [*SIZES, f"collect.out={folder / 'bank.jsonl'}", f"collect.texts={folder / 'texts.jsonl'}"])
    prompts = load_prompts(config.data)
    writes = []  # (file, prompt id), in the order they were handed to the files
    with JsonlBank(config, prompts, bank_row, texts_row) as writer:
        for name, sink in (("side", writer.side_sink), ("bank", writer.bank_sink)):
            def recording(rows, name=name, write=sink.write):
                rows = list(rows)
                writes.extend((name, row["prompt_id"]) for row in rows)
                write(rows)
            sink.write = recording
        pending = {p.prompt_id for p in writer.pending(prompts)}
        for index in finishing_order:
            if results[index]["prompt_id"] in pending:
                writer.write([results[index]])
        assert set(writer.waiting) == set(waiting_at_exit)  # nothing written stays held
    for prompt_id in {p for _, p in writes}:
        assert writes.index(("side", prompt_id)) < writes.index(("bank", prompt_id))
    return (folder / "bank.jsonl").read_bytes(), (folder / "texts.jsonl").read_bytes()


def test_a_jsonl_bank_is_written_in_the_data_s_order_whatever_order_prompts_finish_in(tmp_path):
    # the same collection twice must be the same bytes: replay draws a bank's prompts by their place in it
    results = run_in_process(SIZES, SampleRecorder(keep_texts=True), collect=True)
    for name in ("a", "b", "killed"):
        (tmp_path / name).mkdir()
    in_order = write_jsonl_bank(tmp_path / "a", results, range(5))
    assert [json.loads(line)["prompt_id"] for line in in_order[0].splitlines()] == [f"sim{i}" for i in range(5)]
    assert write_jsonl_bank(tmp_path / "b", results, [3, 1, 0, 4, 2]) == in_order
    # killed with sim2 and sim3 finished but waiting for sim1: only sim0 is written; the rerun ends the same
    first = write_jsonl_bank(tmp_path / "killed", results, [0, 2, 3], waiting_at_exit=("sim2", "sim3"))
    assert [json.loads(line)["prompt_id"] for line in first[0].splitlines()] == ["sim0"]
    assert write_jsonl_bank(tmp_path / "killed", results, [4, 3, 2, 1, 0]) == in_order
    # what bounds the prompts it holds: the driver admits prompts at most a window out of order for it
    assert JsonlBank.in_order and ParquetShards.in_order


def test_a_jsonl_bank_refuses_a_prompt_that_finishes_twice(tmp_path):
    results = run_in_process(SIZES, SampleRecorder(keep_texts=True), collect=True)
    with pytest.raises(ValueError, match="prompt 'sim1' finished twice, or was not asked for"):
        write_jsonl_bank(tmp_path, results, [1, 1])  # the first finish still waits for sim0
    (tmp_path / "written").mkdir()
    with pytest.raises(ValueError, match="prompt 'sim0' finished twice, or was not asked for"):
        write_jsonl_bank(tmp_path / "written", results, [0, 0])  # the first finish is already written


def test_collect_shards_go_to_jsonl_and_back_without_loss(tmp_path):
    collect_shards(tmp_path / "bank", keep_texts=True)
    jsonl, back, again = tmp_path / "b.jsonl", tmp_path / "back.parquet", tmp_path / "again.jsonl"
    assert main(["convert-bank", str(tmp_path / "bank"), str(jsonl)]) == 0
    assert main(["convert-bank", str(jsonl), str(back)]) == 0
    assert main(["convert-bank", str(back), str(again)]) == 0
    assert read_bank_rows(back) == read_bank_rows(tmp_path / "bank")
    assert again.read_text() == jsonl.read_text()  # byte for byte
    first = read_bank_rows(tmp_path / "bank")[0]
    assert [len(r) for r in first["responses"]] == [5, 5, 5]
    assert all(text.startswith(state) for state, texts in zip(first["state_texts"], first["responses"]) for text in texts)


def test_slg_shards_load_with_pyarrow_dataset_and_datasets(tmp_path):
    pa_dataset = require("pyarrow.dataset")
    datasets = require("datasets")  # skipped only off CI, where the dev extras are not installed
    collect_shards(tmp_path / "bank")
    (tmp_path / "bank" / ".part-00009.parquet.tmp").write_bytes(b"torn")  # a writer's leftover: hidden from readers
    table = pa_dataset.dataset(tmp_path / "bank", format="parquet").to_table()
    assert table.num_rows == 15 and table.column("prompt_id").to_pylist()[::3] == [f"sim{i}" for i in range(5)]
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "bank"), split="train")
    assert len(loaded) == 15 and len(loaded[0]["rewards"]) == 5 and len(loaded[0]["correct"]) == 5


def test_parquet_rewards_are_a_few_bytes_each(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"prompt_id": f"p{i}", "states": [rng.normal(size=2000).astype(np.float32) for _ in range(16)]} for i in range(8)]
    write_bank(tmp_path / "b.parquet", rows)
    # float32 split into byte streams, no dictionary: 3.40 (3.73 unsplit, 6.4 with a dictionary)
    assert (tmp_path / "b.parquet").stat().st_size / (8 * 16 * 2000) < 3.5


def test_a_streamed_bank_reads_the_same_prompts_in_chunks_of_a_few(tmp_path, monkeypatch):
    collect_shards(tmp_path / "bank")
    whole = read_bank_rows(tmp_path / "bank")
    streamed = StreamedBank(tmp_path / "bank")
    assert streamed.num_prompts == 5 and streamed.smallest_pool.size == 5
    assert streamed.max_reward == max(max(s) for row in whole for s in row["states"])
    chunks = list(streamed.chunks(max_rewards=20))  # 15 rewards a prompt: one prompt a chunk
    assert [first for first, _ in chunks] == [0, 1, 2, 3, 4]
    for (_, prompts), row in zip(chunks, whole):
        assert len(prompts) == 1 and prompts[0].prompt_id == row["prompt_id"]
        assert [s.tolist() for s in prompts[0].state_rewards] == row["states"]
    assert [len(p) for _, p in streamed.chunks(max_rewards=30)] == [2, 2, 1]  # never across a shard's file
    monkeypatch.setattr(bank_reader, "CHUNK_REWARDS", 40)
    assert [len(p) for _, p in streamed.chunks()] == [2, 2, 1]


def test_a_chunks_rows_are_split_evenly_into_row_groups(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from pipeline.offline import parquet_writer

    monkeypatch.setattr(parquet_writer, "ROW_GROUP_REWARDS", 1000)
    monkeypatch.setattr(parquet_writer, "CHUNK_REWARDS", 4000)
    rows = [{"prompt_id": f"p{i}", "states": [[float(i)] * 300]} for i in range(30)]  # chunks of 14, 14 and 2 prompts
    write_bank(tmp_path / "b.parquet", rows)
    # 4200 rewards a full chunk: 4 groups of 4, 4, 4 and 2 rows (3 rows a group, as 1000 // 300 has it,
    # would leave a fifth group of 2 at the end of each chunk); the last chunk's 600 rewards: 1 group
    sizes = [pq.ParquetFile(tmp_path / "b.parquet").metadata.row_group(g).num_rows for g in range(9)]
    assert pq.ParquetFile(tmp_path / "b.parquet").num_row_groups == 9 and sizes == [4, 4, 4, 2, 4, 4, 4, 2, 2]
    assert read_bank_rows(tmp_path / "b.parquet") == rows


def test_a_prompt_split_over_row_groups_is_read_whole(tmp_path, monkeypatch):
    from pipeline.offline import parquet_writer

    monkeypatch.setattr(parquet_writer, "ROW_GROUP_REWARDS", 2)  # 2.5 rewards a row: a row group per state
    rows = [{"prompt_id": f"p{i}", "states": [[float(i), 1.5, 2.5], [3.5, float(i)]]} for i in range(4)]
    write_bank(tmp_path / "b.parquet", rows)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "b.parquet").num_row_groups == 8
    streamed = StreamedBank(tmp_path / "b.parquet")
    assert [[s.tolist() for s in p.state_rewards] for _, chunk in streamed.chunks(max_rewards=5) for p in chunk] == \
        [r["states"] for r in rows]


@pytest.mark.parametrize("fault, match", [
    (lambda rows: rows[1]["states"][1].__setitem__(0, float("nan")), r"prompt 2 \(prompt 'p1'\): state 1 reward 0 is nan"),
    (lambda rows: rows[1]["states"].__setitem__(0, []), r"prompt 2 \(prompt 'p1'\): state 0 has an empty"),
    # finite, but beyond what the statistics can square and sum: refused on reading, not after the work
    (lambda rows: rows[2]["states"][0].__setitem__(1, -1e200), r"prompt 3 \(prompt 'p2'\): state 0 reward 1 is -1e\+200, "
                                                                r"not a finite number within"),
    (lambda rows: rows[0].__setitem__("state_scores", [0.5, 1e300]), r"'state_scores' must hold one prefix score per state"),
    (lambda rows: rows[0].__setitem__("correct", [[True, False], [True]]), r"'correct' must have the same shape"),
    (lambda rows: rows[2].__setitem__("prompt_id", "p0"), r"the states of prompt 'p0' are not consecutive"),
])
def test_a_bad_parquet_bank_is_refused_naming_the_prompt(tmp_path, fault, match):
    rows = [{"prompt_id": f"p{i}", "states": [[0.5, 1.0], [2.0, 3.0]]} for i in range(3)]
    fault(rows)
    write_bank(tmp_path / "b.parquet", rows)
    with pytest.raises(ConfigError, match=match):
        StreamedBank(tmp_path / "b.parquet")


def test_a_jsonl_bank_streams_line_by_line_and_names_its_bad_line(tmp_path):
    rows = [{"prompt_id": f"p{i}", "states": [[0.5, 1.0 + i], [2.0]]} for i in range(3)]
    write_bank(tmp_path / "b.jsonl", rows)
    streamed = StreamedBank(tmp_path / "b.jsonl")
    assert [p.prompt_id for _, chunk in streamed.chunks(max_rewards=3) for p in chunk] == ["p0", "p1", "p2"]
    assert streamed.smallest_pool.size == 1 and (streamed.smallest_pool.prompt_id, streamed.smallest_pool.state) == ("p0", 1)
    assert [p.prompt_id for p in read_bank(tmp_path / "b.jsonl")] == ["p0", "p1", "p2"]
    (tmp_path / "b.jsonl").write_text((tmp_path / "b.jsonl").read_text() + '{"prompt_id": "p1", "states": [[1.0]]}\n')
    with pytest.raises(ConfigError, match="line 4: duplicate prompt_id 'p1'"):
        StreamedBank(tmp_path / "b.jsonl")


def test_the_head_of_a_bank_is_its_first_prompts_within_a_reward_bound(tmp_path):
    rows = [{"prompt_id": f"p{i}", "states": [[float(i), 0.5], [1.0, 2.0, 3.0]]} for i in range(6)]  # 5 rewards each
    write_bank(tmp_path / "b.parquet", rows)
    bank = StreamedBank(tmp_path / "b.parquet")
    assert [p.prompt_id for p in bank.head(4).prompts] == ["p0", "p1", "p2", "p3"]
    assert [p.prompt_id for p in bank.head(4, max_rewards=12).prompts] == ["p0", "p1"]  # a third would make 15
    assert [p.prompt_id for p in bank.head(4, max_rewards=1).prompts] == ["p0"]  # at least one
    assert [p.prompt_id for p in bank.head(10).prompts] == [f"p{i}" for i in range(6)]


@pytest.mark.parametrize("metadata, match", [
    (b'{"format_version": 2}', "is in bank format 2; this slg reads format 1"),  # its columns may mean something else
    (b"not json", "slg.bank metadata is not a JSON object"),
    (b"[1]", "slg.bank metadata is not a JSON object"),
    (b'{"format_version": 0}', "is in bank format 0; this slg reads format 1$"),
])
def test_a_bank_of_another_format_is_refused_when_read(tmp_path, metadata, match):
    import pyarrow.parquet as pq

    write_bank(tmp_path / "b.parquet", [{"prompt_id": "p0", "states": [[0.5, 1.0]]}])
    table = pq.read_table(tmp_path / "b.parquet")
    pq.write_table(table.replace_schema_metadata({b"slg.bank": metadata}), tmp_path / "b.parquet")
    with pytest.raises(ConfigError, match=match):
        StreamedBank(tmp_path / "b.parquet")
    pq.write_table(table.replace_schema_metadata({}), tmp_path / "b.parquet")  # another tool's Parquet: format 1
    assert [p.prompt_id for p in read_bank(tmp_path / "b.parquet")] == ["p0"]
