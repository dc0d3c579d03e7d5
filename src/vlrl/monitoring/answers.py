"""Answer health of a batch: empty, degenerate and repetitive completions.

These are the usual faces of a collapsing policy (an empty `<answer></answer>` that still earns the
format reward, one token repeated to the length limit, only punctuation) and they show in the text
long before they show in the loss.
"""

from __future__ import annotations

from vlrl.rewards.tags import last_answer

# A text of at least this many words whose distinct words are fewer than this share is degenerate:
# "the the the ..." loops, not an answer.
MIN_WORDS_FOR_RATIO = 10
MIN_UNIQUE_RATIO = 0.2


def answer_text(text: str) -> str:
    """The answer a completion gives: its last `<answer>` content, or the whole text without tags.

    >>> answer_text("<think>2+2</think><answer> 4 </answer>")
    ' 4 '
    >>> answer_text("just 4")
    'just 4'
    """
    answer = last_answer(text)
    return text if answer is None else answer


def is_degenerate(answer: str) -> bool:
    """Whether a non-empty answer is noise: only punctuation or symbols, or extremely repetitive.

    >>> is_degenerate("?!..."), is_degenerate("7 " * 20), is_degenerate("the answer is 7")
    (True, True, False)
    """
    if not any(ch.isalnum() for ch in answer):
        return True
    words = answer.split()
    return len(words) >= MIN_WORDS_FOR_RATIO and len(set(words)) / len(words) < MIN_UNIQUE_RATIO


def repetition(text: str, n: int = 3) -> float:
    """Share of repeated word n-grams, 1 - distinct / total: 0 for none, near 1 for a loop.

    The same measure as the repetition reward (which is its negative), so the two can share a
    threshold. Texts shorter than n words have no n-grams and count as 0.

    >>> repetition("a b c a b c a b c", n=3)
    0.5714285714285714
    """
    words = text.split()
    ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def answer_health(texts: list[str], ngram: int = 3) -> dict[str, float]:
    """`answers/empty_frac`, `answers/degenerate_frac` (of non-empty answers, so the two add up to
    the share of unusable answers) and `answers/repetition` (mean over whole completions); {} for
    an empty batch."""
    if not texts:
        return {}
    answers = [answer_text(t).strip() for t in texts]
    empty = sum(not a for a in answers)
    degenerate = sum(bool(a) and is_degenerate(a) for a in answers)
    return {
        "answers/empty_frac": empty / len(texts),
        "answers/degenerate_frac": degenerate / len(texts),
        "answers/repetition": sum(repetition(t, ngram) for t in texts) / len(texts),
    }
