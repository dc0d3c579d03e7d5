"""MathVista's answer rules (Lu et al. 2024, arXiv 2310.02255; github.com/lupantech/MathVista).

A sample carries `question_type` ("multi_choice" / "free_form"), `answer_type` ("text",
"integer", "float", "list"), `precision` (decimal places of a float answer) and `choices`; the
ground truth of a multiple-choice question is the text of the right choice.

Extraction: MathVista asks GPT-4 to extract the answer (`evaluation/extract_answer.py`) after a
few rules that need no model: a response that is one of the choices is that choice, and a
response that parses as an integer / float is that number. We keep those rules and, instead of
GPT-4, use the answer a response states (`<answer>` tag, `\\boxed{}`, "the answer is") and, for
numeric answers, the last number in it. A multiple-choice response with no such cue is read as
GPT-4's few-shot examples read it: a bare letter ("B", "(b)") or a leading label ("(B) dog",
"B. dog") is that letter, else the last "(B)" the response names.

Scoring is `evaluation/calculate_score.py`: `normalize_extracted_answer`, then exact string
equality with the ground truth (`safe_equal`). One departure: MathVista maps any text that names
no choice to the choice nearest by edit distance, which is harmless after GPT-4 has cut the
answer down to a few words but maps a whole sentence saying "no" to "Yes" (nearest by length).
Here a text that begins with a choice as a word ("No, the bar...") is that choice, and the
nearest choice is taken only when the edit distance is at most half the longer string's length,
so that the text is mostly that choice (an article, a typo); otherwise there is no answer.
"""

from __future__ import annotations

import ast
import json
import re

from vlrl.data.sample import Sample
from vlrl.evaluation.extraction import last_number, tagged_or_cued

_LETTER_IN_PARENS = re.compile(r"\(([a-zA-Z])\)")
# A response that is only a letter ("B", "(b)", "B."), or opens with a label ("(B) dog", "B. dog").
_LABEL = re.compile(r"[(\[]?([A-Za-z])[)\]]?[.:]?\s*$|(?:\(([A-Za-z])\)|([A-Z])[.:)])\s")
_NAMED = re.compile(r"\(([A-Z])\)")


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


def _letters(sample: Sample) -> list[str]:
    return [chr(ord("A") + i) for i in range(len(sample.choices or []))]


def _untagged_choice(text: str, sample: Sample) -> str | None:
    """A choice, or its letter, in a response with no answer cue: the whole response if it is a
    choice (MathVista's rule), a bare letter or leading label, else the last "(B)" it names."""
    whole = text.strip()
    if whole in (sample.choices or []):
        return whole
    label = _LABEL.match(whole)
    letter = next((g for g in label.groups() if g), "").upper() if label else ""
    named = [m for m in _NAMED.findall(whole) if m in _letters(sample)]
    if letter in _letters(sample):
        return letter
    return named[-1] if named else None


def extract(text: str, sample: Sample) -> str | None:
    """The answer a response states; for integer / float answers, its last number.

    >>> s = Sample("1", "q", "3", extra={"question_type": "free_form", "answer_type": "integer"})
    >>> extract("<answer>3 cm</answer>", s), extract("It is 2, no, 3", s)
    ('3', '3')
    >>> mc = Sample("2", "q", "dog", choices=["cat", "dog"], extra={"question_type": "multi_choice"})
    >>> extract("b", mc), extract("(B) dog, it barks", mc), extract("Not (A) but (B) here.", mc)
    ('B', 'B', 'B')
    """
    stated = tagged_or_cued(text)
    if sample.extra.get("question_type") == "multi_choice":
        return stated if stated is not None else _untagged_choice(text, sample)
    candidate = text if stated is None else stated
    if sample.extra.get("answer_type") in ("integer", "float"):
        return candidate if _is_number(candidate) else last_number(candidate)
    return stated


def _nearest_choice(extraction: str, choices: list[str]) -> str | None:
    """The choice `extraction` begins with as a word, else the most similar one by edit distance
    if at most half the longer string's length apart (see the module docstring); else None."""
    lower = extraction.lower()
    leading = [c for c in choices if re.match(rf"{re.escape(c.lower())}(?!\w)", lower)]
    if leading:
        return max(leading, key=len)
    # The distance is at least the difference in length, so only choices within a factor of two
    # in length can be close; skipping the others keeps a long response from costing O(n * m).
    near = [c for c in choices if max(len(c), len(extraction)) <= 2 * min(len(c), len(extraction))]
    distances = [edit_distance(extraction, c) for c in near]
    close = [(d, i) for i, d in enumerate(distances) if 2 * d <= max(len(extraction), len(near[i]))]
    return near[min(close)[1]] if close else None  # first of equals, as theirs


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

    Multiple choice: "(b)" reads as the letter B, a letter names its choice (so does a leading
    label, "B. dog"), any other text maps to a choice it begins with or, when close, to the most
    similar choice by edit distance (`_nearest_choice`); None when it names none. Integer: str(int(float(x))) (so 3.7 -> "3", as
    theirs). Float: str(round(float(x), precision)). List: see `_as_list`. Text: as is.

    >>> mc = Sample("1", "q", "dog", choices=["cat", "dog"], extra={"question_type": "multi_choice"})
    >>> normalize("(b) dog", mc), normalize("B", mc), normalize("a dog", mc), normalize("a bird, I think", mc)
    ('dog', 'dog', 'dog', None)
    >>> fl = Sample("2", "q", "3.5", extra={"answer_type": "float", "precision": 2})
    >>> normalize("3.50", fl), normalize("3.499", fl), normalize("three", fl) is None
    ('3.5', '3.5', True)
    """
    extraction = extraction.strip()
    if sample.extra.get("question_type") == "multi_choice":
        choices = [str(c) for c in sample.choices or []]
        if not choices:
            raise ValueError(f"MathVista sample '{sample.id}' is multi_choice but has no choices")
        letter = _LETTER_IN_PARENS.search(extraction) or _LABEL.match(extraction)
        extraction = next(g for g in letter.groups() if g).upper() if letter else extraction
        letters = _letters(sample)
        if extraction in letters:
            return choices[letters.index(extraction)]
        return _nearest_choice(extraction, choices)
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
