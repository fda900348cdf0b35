"""Prompts from files and datasets, and answer grading: math-verify and the reference's last number."""

import json
from pathlib import Path

import pytest

from pipeline.distributed.grading import LastNumberGrader, make_grader
from pipeline.jobs.config import DataConfig
from pipeline.jobs.prompts import load_prompts, read_jsonl_prompts

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "sample_math.jsonl"


def test_the_shipped_sample_set_loads_with_answers():
    prompts = read_jsonl_prompts(SAMPLE, id_field="id")
    assert len(prompts) == 12 and len({p.prompt_id for p in prompts}) == 12
    assert all(p.text.strip() and p.answer for p in prompts)


def test_a_held_out_slice_skips_the_first_rows():
    every = read_jsonl_prompts(SAMPLE, id_field="id")
    sliced = load_prompts(DataConfig(source="jsonl", path=str(SAMPLE), id_field="id", skip_prompts=3, num_prompts=4))
    assert [p.prompt_id for p in sliced] == [p.prompt_id for p in every[3:7]]
    assert [p.prompt_id for p in load_prompts(DataConfig(skip_prompts=2, num_prompts=2))] == ["sim2", "sim3"]


@pytest.mark.parametrize("row, match", [
    ({"question": "x"}, "line 2: no problem field 'problem'"),
    ({"problem": "x"}, "line 2: no answer field 'answer'"),
    ({"problem": "   ", "answer": "1"}, "line 2: the problem field 'problem' is empty"),
])
def test_bad_rows_name_the_row_and_the_field(tmp_path, row, match):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=match):
        read_jsonl_prompts(path)


def test_parquet_and_local_hf_datasets_load_through_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"question": "What is 2+3?", "solution": "5", "uid": "a"}, {"question": "What is 7*6?", "solution": "42", "uid": "b"}]
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(tmp_path / "d.parquet"))
    fields = {"problem_field": "question", "answer_field": "solution", "id_field": "uid"}
    from_parquet = load_prompts(DataConfig(source="parquet", path=str(tmp_path / "d.parquet"), **fields))
    assert [(p.prompt_id, p.answer) for p in from_parquet] == [("a", "5"), ("b", "42")]
    folder = tmp_path / "hub_like"
    folder.mkdir()
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_hf = load_prompts(DataConfig(source="hf", name=str(folder), num_prompts=1, **fields))
    assert [p.prompt_id for p in from_hf] == ["a"]
    with pytest.raises(ValueError, match="row 0: no answer field 'answer'"):
        load_prompts(DataConfig(source="parquet", path=str(tmp_path / "d.parquet"), problem_field="question"))


def test_an_unreachable_hub_dataset_is_a_one_line_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # both libraries read the variables once, at import (an earlier test may have imported them):
    # without these, the lookup retries the network for ~20 s before failing the same way
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="cannot load data 'nonexistent-org/nonexistent-set'"):
        load_prompts(DataConfig(source="hf", name="nonexistent-org/nonexistent-set"))


@pytest.mark.parametrize("response, reference, correct", [
    ("So the answer is \\boxed{18}.", "18", True),
    ("Adding gives 19, minus 3 is 16.", "16", True),
    ("The result is \\frac{1}{2}.", "0.5", True),
    ("\\boxed{\\frac{80}{3}}", "80/3", True),
    ("The answer is 17.", "18", False),
    ("no idea", "18", False),
])
def test_math_verify_grades_boxed_latex_and_numbers(response, reference, correct):
    pytest.importorskip("math_verify")
    answer, verdict = make_grader("math_verify").grade(response, reference)
    assert verdict is correct
    assert (answer is None) == (response == "no idea")


def test_equal_answers_share_a_key_for_majority_voting():
    pytest.importorskip("math_verify")
    grader = make_grader("math_verify")
    assert grader.grade("\\boxed{\\frac{1}{2}}", None)[0] == grader.grade("so it is \\boxed{1/2}", None)[0]


@pytest.mark.parametrize("response, reference, correct", [
    ("3 apples and 1,024 pears", "1024", True),
    ("first 12 then 16.0", "16", True),
    ("ratio 3/4", "0.75", True),
    ("answer 15", "16", False),
    ("none", "16", False),
])
def test_last_number_rule_of_the_reference(response, reference, correct):
    assert LastNumberGrader().grade(response, reference)[1] is correct


def test_unknown_grader_is_refused():
    with pytest.raises(ValueError, match="unknown grader 'vibes'"):
        make_grader("vibes")
