"""MathVista's answer rules (Lu et al. 2024, arXiv 2310.02255; github.com/lupantech/MathVista).

A sample carries `question_type` ("multi_choice" / "free_form"), `answer_type` ("text",
"integer", "float", "list"), `precision` (decimal places of a float answer) and `choices`; the
ground truth of a multiple-choice question is the text of the right choice.

Extraction: MathVista asks GPT-4 to extract the answer (`evaluation/extract_answer.py`) after a
few rules that need no model: a response that is one of the choices is that choice, and a
response that parses as an integer / float is that number. We keep those rules and, instead of
GPT-4, use the answer a response states (`<answer>` tag, `\\boxed{}`, "the answer is") and, for
numeric answers, the last number in it.

Scoring is `evaluation/calculate_score.py`: `normalize_extracted_answer`, then exact string
equality with the ground truth (`safe_equal`).
"""

from __future__ import annotations

import ast
import json
import re

from vlrl.data.sample import Sample
from vlrl.evaluation.extraction import last_number, tagged_or_cued

_LETTER_IN_PARENS = re.compile(r"\(([a-zA-Z])\)")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (MathVista imports it from the `Levenshtein` package).

    >>> edit_distance("kitten", "sitting")
    3
    """
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def extract(text: str, sample: Sample) -> str | None:
    """The answer a response states; for integer / float answers, its last number.

    >>> s = Sample("1", "q", "3", extra={"question_type": "free_form", "answer_type": "integer"})
    >>> extract("<answer>3 cm</answer>", s), extract("It is 2, no, 3", s)
    ('3', '3')
    """
    stated = tagged_or_cued(text)
    if sample.extra.get("question_type") == "multi_choice":
        whole = text.strip()
        return stated if stated is not None else (whole if whole in (sample.choices or []) else None)
    candidate = text if stated is None else stated
    if sample.extra.get("answer_type") in ("integer", "float"):
        return candidate if _is_number(candidate) else last_number(candidate)
    return stated


def _as_list(text: str) -> str:
    """A list answer written one way, "[1, 2]", so that spacing does not decide equality.

    MathVista compares `str(extraction)` as it is; we also parse both sides as JSON or Python
    literals (never `eval`), so "[1,2]" equals "[1, 2]".
    """
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, list | tuple):
            return str(list(value))
    return text


def _decimals(answer: str) -> int:
    """Digits after the point in a ground truth: the precision when a sample gives none."""
    return len(answer.partition(".")[2])


def normalize(extraction: str, sample: Sample) -> str | None:
    """MathVista's `normalize_extracted_answer`; None where it fails (a float that is no number).

    Multiple choice: "(b)" reads as the letter B, a letter names its choice, any other text maps
    to the most similar choice by edit distance. Integer: str(int(float(x))) (so 3.7 -> "3", as
    theirs). Float: str(round(float(x), precision)). List: see `_as_list`. Text: as is.

    >>> mc = Sample("1", "q", "dog", choices=["cat", "dog"], extra={"question_type": "multi_choice"})
    >>> normalize("(b) dog", mc), normalize("B", mc), normalize("a dog", mc)
    ('dog', 'dog', 'dog')
    >>> fl = Sample("2", "q", "3.5", extra={"answer_type": "float", "precision": 2})
    >>> normalize("3.50", fl), normalize("3.499", fl), normalize("three", fl) is None
    ('3.5', '3.5', True)
    """
    extraction = extraction.strip()
    if sample.extra.get("question_type") == "multi_choice":
        choices = [str(c) for c in sample.choices or []]
        if not choices:
            raise ValueError(f"MathVista sample '{sample.id}' is multi_choice but has no choices")
        letter = _LETTER_IN_PARENS.search(extraction)
        extraction = letter.group(1).upper() if letter else extraction
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in letters:
            return choices[letters.index(extraction)]
        return min(choices, key=lambda c: edit_distance(extraction, c))  # first of equals, as theirs
    answer_type = sample.extra.get("answer_type")
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            precision = sample.extra.get("precision")
            digits = _decimals(str(sample.answer)) if precision is None else int(precision)
            return str(round(float(extraction), digits))
    except (ValueError, OverflowError):
        return None
    return _as_list(extraction) if answer_type == "list" else extraction


def score(extracted: str | None, sample: Sample) -> float | None:
    """1.0 if the normalised extraction equals the ground truth string, else 0.0 (`safe_equal`).

    >>> s = Sample("1", "q", "3.5", extra={"answer_type": "float", "precision": 1})
    >>> score("3.50", s), score("3.6", s), score(None, s)
    (1.0, 0.0, 0.0)
    """
    if extracted is None:
        return 0.0
    truth = str(sample.answer).strip()
    if sample.extra.get("answer_type") == "list":
        truth = _as_list(truth)
    return float(normalize(extracted, sample) == truth)
