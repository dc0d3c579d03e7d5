"""MMMU's answer rules (Yue et al. 2024, arXiv 2311.16502; github.com/MMMU-Benchmark/MMMU,
`mmmu/utils/eval_utils.py`), ported function by function.

A multiple-choice sample (`question_type` "multiple-choice") has its options and a letter as
ground truth; an open one has a string, or a list of acceptable strings written as a Python list.

One departure: when `parse_multi_choice_response` finds no option, MMMU picks a letter at random
(`random.choice`), which makes scores vary between runs and credits 1 / (number of options) for
saying nothing. We return no answer instead (scored 0). And a response that is exactly one
option's text names that option (MMMU looks for option text only in responses of more than five
words, so "<answer>dog</answer>" would otherwise be a random pick). The content of an `<answer>`
tag is first read as the training reward reads it (`matching.choice_index`: "A. cat", "[a]",
an option's text or maths), so that eval and reward agree on it; MMMU's parsing is the fallback.

An open answer is parsed once: `extract` gives the key phrases, one per line, and `score` reads
those lines as the key phrases (`predictions`) rather than looking for key phrases in them again.
"""

from __future__ import annotations

import ast
import re

from vlrl.data.sample import Sample
from vlrl.rewards.matching import choice_index
from vlrl.rewards.tags import last_answer

_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}
_NUMBER_PATTERNS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # with thousands commas
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # scientific
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),  # plain; "160m" is no number
)


def is_multiple_choice(sample: Sample) -> bool:
    return sample.extra.get("question_type") == "multiple-choice"


def options(sample: Sample) -> list[str]:
    """The options: `choices`, or `options` where the loader folded image options into the question."""
    return [str(o) for o in (sample.choices or sample.extra.get("options") or [])]


def parse_multi_choice(response: str, opts: list[str]) -> str | None:
    """MMMU's `parse_multi_choice_response`: the letter a response picks, or None.

    In order: "(B)" anywhere; " B " as a word; an option's text inside a response of more than
    five words. Several candidates: the one mentioned last. See the module docstring for the
    departures (no random letter; exact option text).

    >>> opts = ["cat", "dog", "bird"]
    >>> parse_multi_choice("(B)", opts), parse_multi_choice("I pick C", opts), parse_multi_choice("dog", opts)
    ('B', 'C', 'B')
    >>> parse_multi_choice("the animal in the picture is a dog", opts), parse_multi_choice("no idea", opts)
    ('B', None)
    """
    letters = [chr(ord("A") + i) for i in range(len(opts))]
    for char in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(char)
    response = f" {response} "  # spaces, so that " A " also matches at either end
    candidates = [c for c in letters if f"({c})" in response]
    marks = [f"({c})" for c in letters]
    if not candidates:
        candidates = [c for c in letters if f" {c} " in response]
        marks = [f" {c} " for c in letters]
    lower = response.lower()
    if not candidates and len(response.split()) > 5:
        candidates = [c for c, o in zip(letters, opts, strict=True) if o and o.lower() in lower]
        marks = [o.lower() for o in opts]
        response = lower
    if not candidates:
        texts = [o.strip().lower() for o in opts]
        return letters[texts.index(lower.strip())] if lower.strip() in texts else None
    return max(candidates, key=lambda c: (response.rfind(marks[letters.index(c)]), -letters.index(c)))


def key_subresponses(response: str) -> list[str]:
    """MMMU's `get_key_subresponses`: per line, the shortest tail after an answer indicator.

    Indicators are "is ", "so ", "therefore ", "answer " and the like, and "=" on the last line.
    The split `\\.\\s(?=[A-Z])|\\n` runs on lower-cased text, so in MMMU (and here) only newlines
    split. With no indicator anywhere, the whole (lower-cased) response.

    >>> key_subresponses("Adding the two.\\nSo the answer is 3.50."), key_subresponses("x = 4")
    (['3.50'], ['4'])
    """
    response = response.strip().strip(".").lower()
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for index, part in enumerate(parts):
        indicators = _INDICATORS + (("=",) if index == len(parts) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator in part:
                tail = part.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):  # as theirs: an empty tail is replaced
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def extract_numbers(text: str) -> list[str]:
    """MMMU's `extract_numbers`: numbers with commas, in scientific notation, and plain.

    As in MMMU, the plain pattern also picks up pieces of the others ("000" after a comma, "2" and
    "-3" of 2.5e-3): extra candidates, which can only add matches.

    An integer must end at a word boundary (MMMU's `\\d+\\b`), so "160m" holds no number; a
    decimal need not ("1.5m" holds 1.5), as in MMMU.

    >>> extract_numbers("1,000 or 2.5e-3 or -7"), extract_numbers("160m or 1.5m")
    (['1,000', '2.5e-3', '000', '2', '-3', '-7'], ['1.5'])
    """
    return [n for pattern in _NUMBER_PATTERNS for n in pattern.findall(text)]


def normalize_str(text: str) -> list[str | float]:
    """MMMU's `normalize_str`: a number rounded to 2 places, else lower-case text.

    A one-character text becomes " x" and "x " so that it matches only as a word.

    >>> normalize_str("1,000.004"), normalize_str("B"), normalize_str("Paris")
    ([1000.0], [' b', 'b '], ['paris'])
    """
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except (ValueError, OverflowError):
        pass
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def predictions(keys: list[str]) -> list[str | float]:
    """Key phrases and the numbers in them, normalised, deduplicated (the second half of MMMU's
    `parse_open_response`)."""
    found = keys + [n for key in keys for n in extract_numbers(key)]
    return list(dict.fromkeys(v for item in found for v in normalize_str(item)))


def parse_open_response(response: str) -> list[str | float]:
    """MMMU's `parse_open_response`: key phrases and the numbers in them, normalised, deduplicated."""
    return predictions(key_subresponses(response))


def eval_open(gold: str | list[str], predictions: list[str | float]) -> bool:
    """MMMU's `eval_open`: a number equals a gold number, or a gold string occurs in a text.

    >>> eval_open("3.5", parse_open_response("so the answer is 3.50")), eval_open(["Paris"], ["in paris"])
    (True, True)
    """
    truths = [v for g in (gold if isinstance(gold, list) else [gold]) for v in normalize_str(str(g))]
    for prediction in predictions:
        if isinstance(prediction, str):
            if any(isinstance(t, str) and t in prediction for t in truths):
                return True
        elif prediction in truths:
            return True
    return False


def _gold(answer) -> str | list[str]:
    """The ground truth; MMMU stores several acceptable answers as a Python list literal."""
    text = str(answer).strip()
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(value, list):
            return [str(v) for v in value]
    return text


def extract(text: str, sample: Sample) -> str | None:
    """The letter picked, or the key phrases of an open answer, one per line; None for no answer.

    The `<answer>` content when there is one, else the whole response, parsed as MMMU parses a
    response; a choice in the tag is first read as the training reward reads it.

    >>> s = Sample("1", "q", "12", extra={"question_type": "open"})
    >>> extract("<answer>12 apples</answer>", s), extract("We count.\\nThus the total is 12", s)
    ('12 apples', '12')
    >>> extract("<answer>A. cat</answer>", Sample("2", "q", "A", choices=["cat", "dog"],
    ...                                              extra={"question_type": "multiple-choice"}))
    'A'
    """
    content = last_answer(text)
    response = text if content is None else content
    if is_multiple_choice(sample):
        opts = options(sample)
        named = choice_index(content, opts) if content is not None and content.strip() else None
        return chr(ord("A") + named) if named is not None else parse_multi_choice(response, opts)
    return "\n".join(key_subresponses(response)) or None


def score(extracted: str | None, sample: Sample) -> float | None:
    """MMMU's `eval_multi_choice` (letter equality) or `eval_open` on the extracted key phrases;
    no answer scores 0.

    >>> score("B", Sample("1", "q", "B", choices=["a", "b"], extra={"question_type": "multiple-choice"}))
    1.0
    """
    if extracted is None:
        return 0.0
    gold = _gold(sample.answer)
    if is_multiple_choice(sample):
        return float(extracted in (gold if isinstance(gold, list) else [gold]))
    return float(eval_open(gold, predictions(extracted.split("\n"))))
