"""Answer grading: is a response's final answer the reference answer, and which answer is it.

``math_verify`` (default for real engines) uses Hugging Face's math-verify: boxed answers, LaTeX,
fractions, numbers, compared symbolically. ``last_number`` is the reference code's rule: the last
number in the text, compared numerically. ``none`` grades nothing (simulated worlds carry their own
``correct``). The answer key (``extract``) groups equal answers for majority voting.
"""

from __future__ import annotations

import re

GRADERS = ("math_verify", "last_number", "none")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def make_grader(kind: str):
    if kind == "math_verify":
        return MathVerifyGrader()
    if kind == "last_number":
        return LastNumberGrader()
    if kind == "none":
        return None
    raise ValueError(f"unknown grader {kind!r}; expected one of {GRADERS}")


class MathVerifyGrader:
    def __init__(self):
        import logging

        from math_verify import parse, verify  # imported here: only real-engine replicas need it

        logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call with timeouts off
        self._parse, self._verify = parse, verify

    def grade(self, response: str, reference: str | None) -> tuple[str | None, bool | None]:
        """(answer key, correct); the key is None when no answer could be read, correct is None
        without a reference. Timeouts off: signal-based alarms fail outside the main thread."""
        parsed = self._parse(response, parsing_timeout=None)
        key = str(parsed[0]) if parsed else None
        if reference is None:
            return key, None
        gold = self._parse(f"${reference}$", parsing_timeout=None)
        if not parsed or not gold:
            return key, False
        return key, bool(self._verify(gold, parsed, timeout_seconds=None))


class LastNumberGrader:
    def grade(self, response: str, reference: str | None) -> tuple[str | None, bool | None]:
        numbers = _NUMBER.findall(response)
        key = _normalise(numbers[-1]) if numbers else None
        if reference is None:
            return key, None
        gold = _NUMBER.findall(reference)
        return key, key is not None and bool(gold) and _value(key) == _value(_normalise(gold[-1]))


def _normalise(number: str) -> str:
    return number.replace(",", "")


def _value(number: str) -> float | None:
    try:
        if "/" in number:
            numerator, denominator = number.split("/")
            return round(float(numerator) / float(denominator), 9)
        return round(float(number), 9)
    except (ValueError, ZeroDivisionError):
        return None
