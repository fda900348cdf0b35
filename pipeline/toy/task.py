"""The toy reasoning task: short chains of two-digit additions and subtractions, seeded.

A problem is a start value and a few single-digit steps, ``59-7+3-5+8``; its worked solution
writes one step per clause, each starting from the previous result, ``59-7=52;52+3=55;55-5=50;
50+8=58``, and the answer is the last number (58). Every running value stays within 10..99, so
every step reads two digits and writes two. Early tokens decide the answer: the final value is
the first result plus the later steps, so a wrong first result makes every faithful continuation
of that prefix wrong. Answers are read as the pipeline reads them (``generator.grading:
last_number``).

Splits (train, valid, test) are drawn from one seeded stream, test first, and are disjoint by
problem text. Written as JSONL in the project's data format (``id``, ``problem``, ``answer``:
what ``data.source=jsonl`` reads). Pure Python and numpy; this is not the models (see
``actors/toy_models.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.distributed.grading import LastNumberGrader

NUM_STEPS = 4                 # operations per problem
VALUE_RANGE = (10, 99)        # every running value (start included) stays two-digit
DIGIT_RANGE = (1, 9)          # each step adds or subtracts one digit
SIGNS = (1, -1)
ALPHABET = "0123456789+-=;:"  # every character a problem, prompt or solution uses
TASK_SEED = 0                 # the splits of data/toy/ (models are seeded separately)
SPLIT_SIZES = {"train": 20000, "valid": 500, "test": 1000}
STATE_TOKENS = 8              # T: "59-7=52;" (the first step and its result, one token per character)
DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "toy"
_STEP = re.compile(r"([+-])(\d)")
_GRADER = LastNumberGrader()


@dataclass(frozen=True)
class ToyProblem:
    start: int
    steps: tuple[int, ...]    # signed digits: +3 adds 3, -7 subtracts 7

    @property
    def text(self) -> str:
        return str(self.start) + "".join(f"{'+' if s > 0 else '-'}{abs(s)}" for s in self.steps)

    @property
    def answer(self) -> int:
        return self.start + sum(self.steps)

    def solution(self) -> str:
        return solution_from(self, self.start + self.steps[0])


def solution_from(problem: ToyProblem, first_result: int) -> str:
    """The worked solution whose first step writes ``first_result`` (right or wrong) and whose later
    steps are computed faithfully from whatever was written before them."""
    clauses, value = [], problem.start
    for index, step in enumerate(problem.steps):
        result = first_result if index == 0 else value + step
        clauses.append(f"{value}{'+' if step > 0 else '-'}{abs(step)}={result}")
        value = result
    return ";".join(clauses)


def parse_problem(text: str) -> ToyProblem:
    match = re.fullmatch(r"(\d+)((?:[+-]\d)+)", text)
    if match is None:
        raise ValueError(f"not a toy problem: {text!r} (expected e.g. '59-7+3-5+8')")
    steps = tuple(int(digit) * (1 if sign == "+" else -1) for sign, digit in _STEP.findall(match.group(2)))
    return ToyProblem(int(match.group(1)), steps)


def is_correct(response: str, answer: int | str) -> bool:
    """The pipeline's ``last_number`` grading: the response's last number equals the answer."""
    return bool(_GRADER.grade(response, str(answer))[1])


def final_answer(response: str) -> int | None:
    """The answer the pipeline reads (its majority-vote key): the last number, None if there is none."""
    key = _GRADER.grade(response, None)[0]
    return int(key) if key is not None and key.lstrip("-").isdigit() else None


def draw_problems(rng: np.random.Generator, count: int) -> list[ToyProblem]:
    """``count`` problems: uniform start values, then at each step a signed digit drawn uniformly
    among those that keep the running value inside ``VALUE_RANGE``."""
    low, high = VALUE_RANGE
    signed = [sign * d for d in range(DIGIT_RANGE[0], DIGIT_RANGE[1] + 1) for sign in SIGNS]
    allowed = {v: [s for s in signed if low <= v + s <= high] for v in range(low, high + 1)}
    starts = rng.integers(low, high + 1, size=count)
    uniforms = rng.random((count, NUM_STEPS))
    problems = []
    for start, row in zip(starts.tolist(), uniforms.tolist()):
        value, steps = start, []
        for u in row:
            choices = allowed[value]
            steps.append(choices[int(u * len(choices))])
            value += steps[-1]
        problems.append(ToyProblem(start, tuple(steps)))
    return problems


def make_splits(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[ToyProblem]]:
    """Disjoint splits from one seeded stream of problems (test first, then valid, then train;
    repeats skipped), so that the held-out problems do not change when the training split grows."""
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    rng = np.random.default_rng(seed)
    stream: list[ToyProblem] = []
    seen: set[str] = set()
    splits: dict[str, list[ToyProblem]] = {}
    for name in ("test", "valid", "train"):
        problems: list[ToyProblem] = []
        while len(problems) < sizes.get(name, 0):
            if not stream:
                stream = draw_problems(rng, 4096)[::-1]
            problem = stream.pop()
            if problem.text not in seen:
                seen.add(problem.text)
                problems.append(problem)
        splits[name] = problems
    return splits


def write_splits(directory, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, Path]:
    """``DIRECTORY/{train,valid,test}.jsonl``, one ``{"id", "problem", "answer"}`` per line."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, problems in make_splits(seed, sizes).items():
        paths[name] = root / f"{name}.jsonl"
        lines = [json.dumps({"id": f"{name}-{i:05d}", "problem": p.text, "answer": str(p.answer)})
                 for i, p in enumerate(problems)]
        paths[name].write_text("\n".join(lines) + "\n")
    return paths


def read_split(path) -> list[ToyProblem]:
    with Path(path).open() as handle:
        return [parse_problem(json.loads(line)["problem"]) for line in handle if line.strip()]
