"""Finding the final answer in a response: the last `<answer>` tag first, then free-text cues.

A model trained with the R1 template writes `<think>...</think><answer>...</answer>`; its answer
is then the content of the last `<answer>` tag, read by the training reward's own extractor
(`vlrl.rewards.tags.last_answer`). Other models conclude in prose: "The answer is 3.50." or
`\\boxed{3.5}`; those cues are the free-text fallback. Model text is untrusted and can be long,
so the searches here are linear: `str.rfind` and regular expressions without nested repeats.
"""

from __future__ import annotations

import re

from vlrl.rewards.matching import last_boxed
from vlrl.rewards.tags import last_answer

# "the answer is X", "Answer: X", "final answer is: X"; X runs to the end of its line.
_PHRASE = re.compile(r"\banswer\s*(?:is|:)\s*:?[ \t]*([^\n]*)", re.IGNORECASE)
# The last number: "1,234.5" (thousands commas), "-3", ".5"; "1,2,3" reads as 1, 2 and 3.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|-?\.\d+")


def clean(text: str) -> str:
    """An answer without the decoration around it: spaces, a final period, quotes, `$`, `**`.

    >>> clean(' "**3.50**". '), clean("$\\\\frac{1}{2}$")
    ('3.50', '\\\\frac{1}{2}')
    """
    return text.strip().rstrip(".").strip().strip("*\"'`$").strip()


def answer_phrase(text: str) -> str | None:
    """What follows the last "answer is" / "answer:" on its line, cleaned; None if absent or empty.

    >>> answer_phrase("Adding them, the answer is 3.50."), answer_phrase("Final Answer: (B)")
    ('3.50', '(B)')
    """
    found = None
    for match in _PHRASE.finditer(text):
        found = match.group(1)
    found = clean(found) if found is not None else None
    return found or None


def last_number(text: str) -> str | None:
    """The last number in `text`, thousands commas removed.

    >>> last_number("3 apples and 1,250.5 pears"), last_number("none") is None
    ('1250.5', True)
    """
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def tagged_or_cued(text: str) -> str | None:
    """The answer a response states: the last `<answer>` content (unboxed), else a free-text cue.

    Inside the tag a `\\boxed{}` is unwrapped; without a tag the last `\\boxed{}` wins over an
    "answer is" phrase, being the more deliberate mark. None when the response states nothing,
    an empty tag included (the training reward scores that 0 too).

    >>> tagged_or_cued("<think>..</think><answer> $\\\\boxed{12}$ </answer>"), tagged_or_cued("The answer is 7.")
    ('12', '7')
    """
    content = last_answer(text)
    if content is not None:
        inner = last_boxed(content)
        return clean(inner if inner is not None else content) or None
    return last_boxed(text) or answer_phrase(text)
