"""The toy task (core: seeded problems, disjoint splits, answer checking, early steps deciding the
answer) and the shipped toy models (vllm tier: vLLM continues a state's ids, the trained reward
model scores alike in transformers and vLLM, and the driver's RM@1, pass@N and majority vote are
those of the rollouts it scored, some right and some wrong).

The vllm tier uses the weights shipped in data/toy_models (made by `slg make-toy-models`): no
training in CI. One engine per role for the module, the driver in-process (no Ray: the Ray path
is tests/test_vllm.py's); the whole file took 80 s on two busy cores, most of it engine start.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.distributed.grading import LastNumberGrader
from pipeline.toy import task as toy_task
from pipeline.toy.task import ToyProblem, make_splits, parse_problem, solution_from

ROOT = Path(__file__).resolve().parents[1]
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

    from pipeline.toy.models import Codec, ToyTrainingConfig, build_reward_model, build_tokenizer, llama_config, score_rows

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

    from pipeline.toy.models import fit_logistic, pass_at_k, roc_auc, within_prompt_auc

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


# ---------------------------------------------------------------- the shipped toy models in the engines

@pytest.fixture(scope="module")
def engines():
    """vLLM's generator (AsyncLLM, called in-process) and pooling reward model on the shipped toy
    models, one each for the module."""
    pytest.importorskip("vllm")
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from actors.vllm_engine import VLLMGenerator, VLLMRewardModel
    from pipeline.distributed.calls import in_process

    generator = in_process(VLLMGenerator(toy_settings("generator")))
    reward = VLLMRewardModel(toy_settings("reward"))
    yield generator, reward
    generator.close()
    reward.close()


def toy_settings(role: str) -> dict:
    """The engine settings of configs/toy_cpu.yaml for one role (CPU cores left to the engine)."""
    from pipeline.jobs.config import config_as_dict, load_run_config

    section = config_as_dict(load_run_config(str(ROOT / "configs" / "toy_cpu.yaml")))[role]
    section.update(model=str(SHIPPED / role), cpu_cores=None, gpu_memory_utilization=None, device="cpu")
    return section


def test_the_config_cuts_states_where_the_task_decides():
    from pipeline.jobs.config import load_run_config

    config = load_run_config(str(ROOT / "configs" / "toy_cpu.yaml"))
    assert config.generator.state_tokens == toy_task.STATE_TOKENS and config.generator.grading == "last_number"
    assert Path(config.data.path) == Path("data/toy/test.jsonl") and config.data.num_prompts >= 200


@pytest.mark.vllm
def test_the_generator_continues_a_states_token_prefix(engines):
    """From a state ``59-7=52;`` or ``59-7=53;`` the model goes on from the value written there
    (``52+3=`` or ``53+3=``), and the wrong state's continuations are mostly wrong. A generator that
    dropped the state's ids would start again at ``59-7=`` and be as often right after either state."""
    from pipeline.distributed.contract import PromptInput, RolloutRequest, StatePrefix

    generator, _ = engines
    problem = parse_problem("59-7+3-5+8")
    prompt = PromptInput("toy", problem.text, str(problem.answer))
    accuracy = {}
    for first in (52, 53):
        text = solution_from(problem, first)[: toy_task.STATE_TOKENS]
        ids = tuple(generator.replica.tokenizer(text, add_special_tokens=False)["input_ids"])
        assert len(ids) == toy_task.STATE_TOKENS
        rollouts = generator.generate([RolloutRequest(i, prompt, StatePrefix(ids, text), 100 + i) for i in range(32)])
        for rollout in rollouts:
            assert rollout.num_prompt_tokens == len(generator.prompt_ids(prompt)) + toy_task.STATE_TOKENS  # the engine's count
        carried_on = np.mean([r.response_text[len(text):].startswith(f"{first}+3=") for r in rollouts])
        assert carried_on >= 0.9, (first, [r.response_text for r in rollouts[:4]])
        accuracy[first] = np.mean([r.correct for r in rollouts])
    # the model sometimes writes a wrong clause that lands back on the right value (the band report
    # measures 6% right after a wrong first step, 38% after a right one, over 200 problems)
    assert accuracy[53] <= 0.25 and accuracy[52] >= accuracy[53] + 0.2, accuracy


@pytest.mark.vllm
def test_the_trained_reward_model_scores_alike_in_transformers_and_vllm(engines):
    from actors.hf_engine import HFRewardModel
    from pipeline.distributed.contract import PromptInput, RolloutRequest, ScoreRequest

    generator, reward = engines
    problems = toy_task.read_split(toy_task.DATA_DIR / "test.jsonl")[:16]
    prompts = [PromptInput(f"t{i}", p.text, str(p.answer)) for i, p in enumerate(problems)]
    rollouts = generator.generate([RolloutRequest(i, prompts[i % 16], None, i) for i in range(64)])
    requests = [ScoreRequest(i, prompts[i % 16], r.response_text) for i, r in enumerate(rollouts)]
    requests.append(ScoreRequest(64, prompts[0], ""))  # an empty response is scored too, alike
    vllm_scores = np.array([s.reward for s in reward.score(requests)])
    hf_scores = np.array([s.reward for s in HFRewardModel(toy_settings("reward")).score(requests)])  # 16 a batch
    # float32 on the same ids, the same last-token head: measured 5.7e-6 apart at most on this machine
    # (scores of a few units; the reward model's constant of 1e5 that fixes its later norms costs
    # float32 digits), so 2e-5; a sigmoid or another token's head would be off by 0.1 or more
    assert np.abs(vllm_scores - hf_scores).max() < 2e-5
    right = np.array([r.correct for r in rollouts])
    assert 0 < right.sum() < len(right)
    assert vllm_scores[:64][right].mean() > vllm_scores[:64][~right].mean()


@pytest.mark.vllm
def test_the_driver_reports_what_the_toy_rollouts_say(engines):
    """RM@1 (the answer of the top-reward rollout), pass@N, majority vote and their shares over
    prompts, recomputed from every rollout the driver scored, graded here by the task's own checker
    (not the pipeline's grader): real model outputs, some right and some wrong."""
    from collections import Counter, defaultdict

    from pipeline.distributed.contract import PromptInput
    from pipeline.distributed.driver import Driver, SearchObserver
    from pipeline.jobs.config import DriverConfig
    from pipeline.jobs.report import summarise
    from pipeline.jobs.searches import search_grid
    from pipeline.search.config import SearchConfig

    class RolloutLog(SearchObserver):
        def __init__(self):
            self.scored = defaultdict(list)

        def rollout_scored(self, search, slot, position, rollout, reward, sequence):
            self.scored[(search.prompt.prompt_id, search.method, search.budget)].append(
                (sequence, reward, rollout.response_text, rollout.answer))

    generator, reward = engines
    problems = toy_task.read_split(toy_task.DATA_DIR / "test.jsonl")[:12]
    prompts = [PromptInput(f"toy-{i}", p.text, str(p.answer)) for i, p in enumerate(problems)]
    answers = {prompt.prompt_id: problem.answer for prompt, problem in zip(prompts, problems)}
    searches = search_grid(prompts, ["bon"], [4, 16], SearchConfig()) + search_grid(prompts, ["slg"], [16], SearchConfig())
    log = RolloutLog()
    driver = Driver(searches, [generator], [reward], DriverConfig(max_batch_rollouts=64), 0, observer=log, use_ray=False)
    rows, progress = driver.step(None)
    assert progress["done"] and len(rows) == len(searches)
    expected = defaultdict(list)
    for row in rows:
        key = (row["prompt_id"], row["method"], row["budget"])
        scored = sorted(log.scored[key])
        assert len(scored) == row["rollouts"] == row["budget"]
        right = [toy_task.is_correct(text, answers[key[0]]) for _, _, text, _ in scored]
        best = max(range(len(scored)), key=lambda i: (scored[i][1], -scored[i][0]))  # ties: planned first
        assert row["best_reward"] == scored[best][1] and row["answer"] == scored[best][2]
        assert row["correct"] == right[best]  # RM@1
        assert row["pass_at_n"] == any(right)
        votes = Counter(answer for *_, answer in scored if answer is not None)
        first_seen = {}
        for sequence, *_, answer in scored:
            first_seen.setdefault(answer, sequence)
        winner = max(votes, key=lambda a: (votes[a], -first_seen[a]))
        assert row["majority_answer"] == winner and row["majority_correct"] == (int(winner) == answers[key[0]])
        for name, value in (("accuracy", right[best]), ("pass_at_n", any(right)),
                            ("majority_vote", int(winner) == answers[key[0]])):
            expected[(row["method"], row["budget"], name)].append(value)
    for name in ("accuracy", "pass_at_n", "majority_vote"):  # the check means something only if outcomes vary
        assert {v for (_, _, n), values in expected.items() if n == name for v in values} == {True, False}
    summary = summarise(rows, ["bon", "slg"], [4, 16])
    for (method, budget, name), values in expected.items():
        assert summary["methods"][method][str(budget)][name] == pytest.approx(np.mean(values))
