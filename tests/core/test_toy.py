"""The toy task (seeded problems, disjoint splits, answer checking, early steps deciding the answer)
and the shipped toy models in transformers (the reward model judges the first step; the reward
model is the teacher's reading, calibrated). Their vLLM side is tests/vllm/test_toy_engines.py."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.distributed.grading import LastNumberGrader
from pipeline.toy import task as toy_task
from pipeline.toy.task import ToyProblem, make_splits, parse_problem, solution_from

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "data" / "toy_models"


def brute_force_answer(text: str) -> int:
    """The value of a problem's text read as arithmetic, independently of the task's own parser."""
    total, number, sign = 0, "", 1
    for char in text + "+":
        if char.isdigit():
            number += char
        else:
            total, number, sign = total + sign * int(number), "", (1 if char == "+" else -1)
    return total


def test_problems_are_seeded_and_their_answers_are_the_arithmetic():
    first, again, other = make_splits(3, {"test": 50}), make_splits(3, {"test": 50}), make_splits(4, {"test": 50})
    assert [p.text for p in first["test"]] == [p.text for p in again["test"]]
    assert [p.text for p in first["test"]] != [p.text for p in other["test"]]
    for problem in first["test"]:
        assert re.fullmatch(rf"\d\d([+-][1-9]){{{toy_task.NUM_STEPS}}}", problem.text)
        assert problem.answer == brute_force_answer(problem.text)
        assert parse_problem(problem.text) == problem
        values = np.cumsum([problem.start, *problem.steps])
        assert values.min() >= 10 and values.max() <= 99  # every running value two-digit


def test_splits_are_disjoint_and_the_test_split_does_not_depend_on_the_others():
    small = make_splits(0, {"test": 200, "valid": 100, "train": 1000})
    large = make_splits(0, {"test": 200, "valid": 100, "train": 3000})
    texts = {name: [p.text for p in problems] for name, problems in small.items()}
    assert all(len(set(v)) == len(v) for v in texts.values())
    assert not set(texts["test"]) & set(texts["train"]) and not set(texts["test"]) & set(texts["valid"])
    assert not set(texts["valid"]) & set(texts["train"])
    assert [p.text for p in large["test"]] == texts["test"] and [p.text for p in large["valid"]] == texts["valid"]


def test_the_shipped_splits_are_the_seeded_ones_in_the_data_format():
    from pipeline.jobs.prompts import read_jsonl_prompts

    expected = make_splits(toy_task.TASK_SEED)
    for name in ("train", "valid", "test"):
        prompts = read_jsonl_prompts(toy_task.DATA_DIR / f"{name}.jsonl", id_field="id")
        assert [(p.text, p.answer) for p in prompts] == [(q.text, str(q.answer)) for q in expected[name]]


def test_answers_are_checked_as_the_pipeline_grades_them():
    problem = parse_problem("59-7+3-5+8")
    assert problem.answer == 58 and problem.solution() == "59-7=52;52+3=55;55-5=50;50+8=58"
    grader = LastNumberGrader()
    cases = {problem.solution(): True, "59-7=52;52+3=55;55-5=50;50+8=57": False, "59-7=52;52+3=55": False,
             "": False, "58": True, "59-7=52;52+3=55;55-5=50;50+8=58;": True, "59-7=52;52+3=55;55-5=50;50+8=5": False}
    for response, right in cases.items():
        assert toy_task.is_correct(response, problem.answer) is right
        assert grader.grade(response, str(problem.answer))[1] is right  # what the generator replica reports
    assert toy_task.final_answer(problem.solution()) == 58 and toy_task.final_answer("no number") is None


@pytest.mark.parametrize("text", ["59-7+3-5+8", "10+9-9+1-1", "95+4-9-9+8", "42-1-1-1-1"])
def test_a_wrong_first_step_makes_every_faithful_continuation_wrong(text):
    problem = parse_problem(text)
    first = problem.start + problem.steps[0]
    for wrong in [v for v in range(10, 100) if v != first]:
        assert not toy_task.is_correct(solution_from(problem, wrong), problem.answer)
    assert toy_task.is_correct(solution_from(problem, first), problem.answer)
    assert len(problem.solution()[: toy_task.STATE_TOKENS]) == toy_task.STATE_TOKENS
    assert problem.solution()[: toy_task.STATE_TOKENS].endswith(f"={first};")  # T holds the first result


def test_toy_problem_text_round_trips_and_bad_text_is_refused():
    assert ToyProblem(12, (3, -4)).text == "12+3-4"
    with pytest.raises(ValueError, match="not a toy problem"):
        parse_problem("12 + 3")


# ---------------------------------------------------------------- the toy models' pieces (torch, no engines)

def test_the_chat_template_renders_what_the_models_were_trained_on():
    pytest.importorskip("transformers")
    from actors.formatting import prompt_token_ids, reward_token_ids
    from pipeline.distributed.contract import PromptInput
    from pipeline.toy.models import Codec, build_tokenizer

    tokenizer = build_tokenizer()
    codec = Codec(tokenizer)
    problem = parse_problem("59-7+3-5+8")
    prompt = PromptInput("p", problem.text, str(problem.answer))
    assert prompt_token_ids(tokenizer, prompt, {}) == codec.prompt(problem.text)
    assert tokenizer.decode(codec.prompt(problem.text)) == "<s>59-7+3-5+8:"
    pair = reward_token_ids(tokenizer, problem.text, problem.solution(), 128)
    assert pair == codec.pair(problem.text, problem.solution()) and pair[-1] == tokenizer.eos_token_id
    assert len(pair) == 1 + len(problem.text) + 1 + len(problem.solution()) + 1  # one token a character
    assert tokenizer.decode(pair, skip_special_tokens=True) == problem.text + ":" + problem.solution()


def test_the_reward_model_computes_the_teachers_surprise_calibrated():
    """The built classifier against the teacher's own logits (an independent path: the teacher's LM
    head, centred, read at each next token): score = slope * mean surprise + intercept."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    from pipeline.toy.models import Codec, ToyTrainingConfig, build_tokenizer, llama_config, score_rows
    from pipeline.toy.reward_model import build_reward_model

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(llama_config(tokenizer, ToyTrainingConfig())).eval()
    with torch.no_grad():  # a teacher with confident, uneven predictions, like a trained one
        teacher.lm_head.weight.mul_(40.0)
    codec = Codec(tokenizer)
    problems = make_splits(1, {"test": 12})["test"]
    rows = [codec.pair(p.text, p.solution()[:n]) for p, n in zip(problems, range(20, 32))]
    expected = []
    for row in rows:
        with torch.no_grad():
            logits = teacher(input_ids=torch.tensor([row])).logits[0].double()
        centred = logits - logits.mean(dim=1, keepdim=True)
        surprise = [float(centred[0, row[0]])] + [float(centred[t - 1, row[t]]) for t in range(1, len(row))]
        expected.append(np.mean(surprise))
    model = build_reward_model(tokenizer, teacher, slope=2.5, intercept=-3.0)
    got = score_rows(model, rows, tokenizer.pad_token_id).double().numpy()
    assert np.std(expected) > 0.1
    # float32 against float64: measured 8e-6 apart (x 2.5); the faint one-hot and the constant that
    # fixes the later norms each perturb the result by about 1e-6 relative
    assert got == pytest.approx(2.5 * np.array(expected) - 3.0, abs=5e-5)


def test_metrics_match_brute_force():
    from itertools import combinations

    from pipeline.toy.metrics import pass_at_k, roc_auc, within_prompt_auc
    from pipeline.toy.training import fit_logistic

    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 40).astype(float), rng.random(40) < 0.4
    pairs = [(a, b) for a in scores[labels] for b in scores[~labels]]
    assert roc_auc(scores, labels) == pytest.approx(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]))
    assert roc_auc(scores, np.ones(40, bool)) is None
    assert within_prompt_auc([scores[:20], scores[20:], [1.0, 2.0]], [labels[:20], labels[20:], [True, True]]) == (
        pytest.approx((roc_auc(scores[:20], labels[:20]) + roc_auc(scores[20:], labels[20:])) / 2), 2)
    for n, c, k in [(10, 3, 4), (16, 0, 4), (16, 16, 1), (8, 5, 8), (12, 2, 11)]:
        subsets = list(combinations(range(n), k))
        assert pass_at_k(c, n, k) == pytest.approx(np.mean([any(i < c for i in s) for s in subsets]))
    x = rng.normal(size=500)
    y = rng.random(500) < 1 / (1 + np.exp(-(2.0 * x - 0.5)))
    slope, intercept = fit_logistic(x, y)
    p = 1 / (1 + np.exp(-(slope * x + intercept)))
    assert abs(np.sum(y - p)) < 1e-8 and abs(np.sum((y - p) * x)) < 1e-8  # the likelihood's score equations


def test_make_toy_models_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["make-toy-models", str(tmp_path)]) == 2
    assert "notes.txt" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "generator").mkdir()  # a model folder without the manifest is not ours either
    assert main(["make-toy-models", str(tmp_path)]) == 2
    assert main(["make-toy-models", str(tmp_path / "none"), "--report-only"]) == 2


def test_the_shipped_models_are_complete_and_judge_the_first_step():
    """Trained weights, not noise: the reward model prefers the worked solution to the same chain
    carried on from a wrong first result, on most held-out problems."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from actors.formatting import reward_token_ids
    from pipeline.toy.models import MANIFEST, score_rows

    manifest = json.loads((SHIPPED / MANIFEST).read_text())
    assert manifest["complete"] and manifest["seed"] == 0
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED / "reward")
    model = LlamaForSequenceClassification.from_pretrained(SHIPPED / "reward").eval()
    problems = toy_task.read_split(toy_task.DATA_DIR / "test.jsonl")[:50]
    right = [reward_token_ids(tokenizer, p.text, p.solution(), 128) for p in problems]
    wrong = [reward_token_ids(tokenizer, p.text, solution_from(p, p.start + p.steps[0] + 1), 128) for p in problems]
    prefers = (score_rows(model, right, tokenizer.pad_token_id) > score_rows(model, wrong, tokenizer.pad_token_id)).numpy()
    assert prefers.mean() >= 0.8


def test_the_config_cuts_states_where_the_task_decides():
    from pipeline.jobs.config import load_run_config

    config = load_run_config(str(ROOT / "configs" / "toy_cpu.yaml"))
    assert config.generator.state_tokens == toy_task.STATE_TOKENS and config.generator.grading == "last_number"
    assert Path(config.data.path) == Path("data/toy/test.jsonl") and config.data.num_prompts >= 200
