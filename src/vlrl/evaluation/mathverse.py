"""MathVerse answers (Zhang et al. 2024, arXiv 2403.14624; github.com/ZrrSkywalker/MathVerse).

MathVerse scores with GPT-4 twice: once to extract the answer, once to judge it equivalent to
the ground truth. We replace both with rules: the answer a response states (`<answer>` tag,
`\\boxed{}`, "the answer is"), then exact match after normalisation, then, for free-form
questions, mathematical equivalence by math-verify (the training reward's bounded
`math_equal`). A multi-choice question (`question_type` "multi-choice") has a letter as ground
truth and lists its options inside the question ("Choices:\\nA:30°\\nB:60°"); an answer that
is an option's text is read as that option's letter.
"""

from __future__ import annotations

import re

from vlrl.data.sample import Sample
from vlrl.evaluation.extraction import tagged_or_cued
from vlrl.rewards.matching import math_equal, normalize

# "B", "(B)", "B:", "B. 60°", "B) 60°": a letter standing alone at the start.
_LETTER = re.compile(r"\(?([A-Z])\)?(?=$|[\s.:,)])")
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])\)?\s*[:.)]\s*(.+?)\s*$", re.MULTILINE)


def is_multi_choice(sample: Sample) -> bool:
    return sample.extra.get("question_type") == "multi-choice"


def options_in_question(question: str) -> dict[str, str]:
    """Option texts (normalised) by letter, from the lines after "Choices:" in the question.

    >>> options_in_question("Find x.\\nChoices:\\nA:30°\\nB: 60°")
    {'30°': 'A', '60°': 'B'}
    """
    _, found, listed = question.partition("Choices:")
    return {normalize(text): letter for letter, text in _OPTION_LINE.findall(listed)} if found else {}


def extract(text: str, sample: Sample) -> str | None:
    """The stated answer; for multi-choice, the letter it names (by letter or option text).

    >>> s = Sample("1", "Find x.\\nChoices:\\nA:30°\\nB:60°", "B", extra={"question_type": "multi-choice"})
    >>> extract("<answer>(B) 60°</answer>", s), extract("The answer is 60°.", s), extract("hm", s)
    ('B', 'B', None)
    """
    stated = tagged_or_cued(text)
    if stated is None or not is_multi_choice(sample):
        return stated
    letter = _LETTER.match(stated)
    if letter:
        return letter.group(1)
    return options_in_question(sample.question).get(normalize(stated), stated)


def score(extracted: str | None, sample: Sample) -> float | None:
    """1.0 on an exact (normalised) match or, for free-form, math-verify equivalence; else 0.0.

    >>> s = Sample("1", "q", "\\\\frac{1}{2}", extra={"question_type": "free-form"})
    >>> score("0.5", s), score("1/3", s), score(None, s)
    (1.0, 0.0, 0.0)
    """
    if extracted is None:
        return 0.0
    truth = str(sample.answer)
    if normalize(extracted) == normalize(truth):
        return 1.0
    return float(not is_multi_choice(sample) and math_equal(extracted, truth))
