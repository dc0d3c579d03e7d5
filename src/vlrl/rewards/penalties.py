"""Shaping penalties (<= 0): length, truncation, repetition, and language mixing."""

from __future__ import annotations

import re

from vlrl.rewards.fields import column
from vlrl.rewards.tags import think_text

# Han ideographs (with extension A and compatibility forms), kana, and Hangul syllables.
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
# Latin words of two or more letters that are not LaTeX commands: one-letter maths variables and
# `\frac` should not make a Chinese derivation count as mixed.
_LATIN_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_TAG = re.compile(r"</?(?:think|answer|caption)>")


def overlong_reward(
    completions: list[str],
    completion_length: list[int],
    max_new_tokens: list[int],
    overlong_buffer: list[int],
    **fields,
) -> list[float | None]:
    """Soft overlong punishment of DAPO (arXiv 2503.14476, eq. 13).

    With L_max = max_new_tokens, L_cache = overlong_buffer and |y| = completion_length (tokens):
    0 while |y| <= L_max - L_cache, then falling linearly, (L_max - L_cache - |y|) / L_cache, to -1 at
    L_max, and -1 beyond it. With no buffer: -1 only beyond L_max.

    >>> overlong_reward(["", "", "", ""], completion_length=[60, 80, 90, 100],
    ...                 max_new_tokens=[100] * 4, overlong_buffer=[20] * 4)
    [0.0, 0.0, -0.5, -1.0]
    """
    rewards: list[float | None] = []
    for length, limit, buffer in zip(completion_length, max_new_tokens, overlong_buffer, strict=True):
        if length > limit:
            rewards.append(-1.0)
        elif buffer <= 0 or length <= limit - buffer:
            rewards.append(0.0)
        else:
            rewards.append((limit - buffer - length) / buffer)
    return rewards


def repetition_reward(
    completions: list[str], repetition_ngram: list[int] | None = None, **fields
) -> list[float | None]:
    """-(1 - unique n-grams / all n-grams) over lower-cased words; 0.0 below n words.

    The n-gram repetition penalty of Yeo et al., Demystifying Long CoT (arXiv 2502.03373, App. C.2),
    as in open-r1's `get_repetition_penalty_reward` with max_penalty -1. n from `repetition_ngram`
    (default 3).

    >>> repetition_reward(["a b c d", "a b a b a b", "a b"])
    [0.0, -0.5, 0.0]
    """
    rewards: list[float | None] = []
    for text, n in zip(completions, column(repetition_ngram, len(completions), 3), strict=True):
        words = text.lower().split()
        ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        rewards.append(len(set(ngrams)) / len(ngrams) - 1.0 if ngrams else 0.0)
    return rewards


def language_mix_reward(
    completions: list[str], language_mix_threshold: list[float] | None = None, **fields
) -> list[float | None]:
    """-1.0 if the completion mixes CJK and Latin script, else 0.0.

    A language-mixing penalty in the spirit of MAYE (arXiv 2504.02587) and DeepSeek-R1's
    language-consistency reward (arXiv 2501.12948). With c = CJK characters and l = letters in Latin
    words of 2+ letters (LaTeX commands, one-letter variables and the R1 tags excluded), the text is
    mixed when both c / (c + l) and l / (c + l) exceed `language_mix_threshold` (default 0.1).

    >>> language_mix_reward(["The cat is black.", "这只猫是黑色的。", "这只猫是 black cat 的。", "设 x = 3，则 \\\\frac{x}{2}"])
    [0.0, 0.0, -1.0, 0.0]
    """
    rewards: list[float | None] = []
    for text, threshold in zip(
        completions, column(language_mix_threshold, len(completions), 0.1), strict=True
    ):
        text = _TAG.sub(" ", text)
        cjk = len(_CJK.findall(text))
        latin = sum(len(w) for w in _LATIN_WORD.findall(text))
        total = cjk + latin
        rewards.append(-1.0 if total and min(cjk, latin) / total > threshold else 0.0)
    return rewards


def no_eos_reward(completions: list[str], finish_reason: list[str], **fields) -> list[float | None]:
    """-1.0 for a completion cut off at the token limit (finish_reason "length", no EOS), else 0.0.

    The hard counterpart of `overlong`: DAPO (arXiv 2503.14476) notes that truncated samples add
    reward noise; this marks them plainly.

    >>> no_eos_reward(["done", "and then"], finish_reason=["stop", "length"])
    [0.0, -1.0]
    """
    return [-1.0 if reason == "length" else 0.0 for reason in finish_reason]


def min_length_reward(
    completions: list[str], min_think_words: list[int] | None = None, **fields
) -> list[float | None]:
    """-1.0 if the `<think>` section has fewer than `min_think_words` words (default 5), else 0.0.

    Guards against the reasoning collapsing to nothing when only the answer is rewarded. A
    completion without `<think>` counts as zero words.

    >>> min_length_reward(["<think>count the cats one by one</think><answer>2</answer>",
    ...                    "<think>2</think><answer>2</answer>", "<answer>2</answer>"])
    [0.0, -1.0, -1.0]
    """
    minimum = column(min_think_words, len(completions), 5)
    return [
        -1.0 if len(think_text(c).split()) < m else 0.0 for c, m in zip(completions, minimum, strict=True)
    ]
