"""Training dynamics as MAYE tracks them (Ma et al., arXiv 2504.02587): response length and the
share of reflective responses, each split by whether the answer was correct.

MAYE's point is that accuracy alone hides how a policy changes: lengths and reflection words
("wait", "re-check", ...) rise and fall in phases, and a drift of the incorrect responses only
shows once the two groups are separated.
"""

from __future__ import annotations

import re
from functools import cache
from statistics import fmean


@cache
def reflection_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    """One case-insensitive regex matching any of `words` as a whole word or phrase; None for none.

    Whole-word means not inside a longer word ("await" is not "wait"); the spaces of a phrase match
    any whitespace ("but\\nwait"). Longest alternatives first so a phrase wins over its prefix.
    """
    parts = [
        r"\s+".join(map(re.escape, w.split())) for w in sorted(words, key=len, reverse=True) if w.strip()
    ]
    if not parts:
        return None
    return re.compile(rf"(?<![\w-])(?:{'|'.join(parts)})(?![\w-])", re.IGNORECASE)


def has_reflection(text: str, words: list[str] | tuple[str, ...]) -> bool:
    """Whether `text` uses any of the reflection `words`.

    >>> has_reflection("7 apples. Wait, let me re-check: 8.", ["wait"])
    True
    >>> has_reflection("I await the answer.", ["wait"])
    False
    """
    pattern = reflection_pattern(tuple(words))
    return pattern is not None and pattern.search(text) is not None


def dynamics_metrics(
    texts: list[str], correct: list[bool | None], lengths: list[int], reflection_words: list[str]
) -> dict[str, float]:
    """MAYE's per-batch dynamics over the batch's completions, all lists of the same length B.

    `correct[i]` is None where correctness is unknown (no accuracy for that sample): such responses
    count in the overall numbers only. A split with no responses is left out rather than logged as
    NaN or 0, which would read as a real value on a curve.

    >>> dynamics_metrics(["Wait, 3", "3", "5"], [True, True, False], [4, 2, 1], ["wait"])["reflection/ratio_correct"]
    0.5
    """
    if not (len(texts) == len(correct) == len(lengths)):
        raise ValueError(
            f"texts, correct and lengths differ in length: {len(texts)}, {len(correct)}, {len(lengths)}"
        )
    if not texts:
        return {}
    reflects = [float(has_reflection(t, reflection_words)) for t in texts]
    out = {"response_length/mean": fmean([float(n) for n in lengths]), "reflection/ratio": fmean(reflects)}
    for label, want in (("correct", True), ("incorrect", False)):
        rows = [i for i, c in enumerate(correct) if c is not None and bool(c) == want]
        if rows:
            out[f"response_length/{label}_mean"] = fmean([float(lengths[i]) for i in rows])
            out[f"reflection/ratio_{label}"] = fmean([reflects[i] for i in rows])
    return out
