"""The R1 output layout: `<think>reasoning</think><answer>result</answer>` and its parsing.

Model text is untrusted and can be megabytes long, so everything here is linear time: tags are
located with `str.find` / `str.count`, and the one regular expression runs only after the tag counts
have ruled out backtracking.
"""

from __future__ import annotations

import re
from functools import cache


@cache
def _layout(tags: tuple[str, ...]) -> re.Pattern[str]:
    body = r"\s*".join(rf"<{t}>.*?</{t}>" for t in tags)
    return re.compile(rf"\s*{body}\s*", re.DOTALL)


def has_layout(text: str, tags: tuple[str, ...]) -> bool:
    """Whether `text` is exactly the given tag pairs in order, each once, with only whitespace around.

    >>> has_layout("<think>a</think> <answer>b</answer>", ("think", "answer"))
    True
    >>> has_layout("<think>a</think>b<answer>c</answer>", ("think", "answer"))
    False
    """
    once = all(text.count(f"<{t}>") == 1 and text.count(f"</{t}>") == 1 for t in tags)
    return once and _layout(tags).fullmatch(text) is not None


def last_answer(text: str) -> str | None:
    """The content of the last complete `<answer>...</answer>`, or None when there is none.

    "Last" is the last closing tag and the nearest opening tag before it; nested tags resolve to the
    innermost content.

    >>> last_answer("<answer>1</answer> wait, <answer>2</answer>")
    '2'
    >>> last_answer("<answer><answer>3</answer></answer>")
    '3'
    >>> last_answer("<answer>unclosed") is None
    True
    """
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    if start < 0:
        return None
    start += len("<answer>")
    return text[start : text.find("</answer>", start)]


def think_text(text: str) -> str:
    """The content of the first `<think>...</think>`, or "" when there is none.

    >>> think_text("<think> look at the image </think><answer>2</answer>")
    ' look at the image '
    """
    start = text.find("<think>")
    end = text.find("</think>", start + len("<think>")) if start >= 0 else -1
    return text[start + len("<think>") : end] if end >= 0 else ""


def format_reward(completions: list[str], **fields) -> list[float | None]:
    """1.0 iff the completion is `<think>...</think><answer>...</answer>` and nothing else.

    The R1 format reward (DeepSeek-R1, arXiv 2501.12948), made strict: each tag exactly once, in
    order, only whitespace between and around, so that a model cannot collect it while emitting
    several answers. Empty sections pass; `min_length` judges the reasoning.

    >>> format_reward(["<think>2+1</think>\\n<answer>3</answer>", "<answer>3</answer>"])
    [1.0, 0.0]
    """
    return [float(has_layout(c, ("think", "answer"))) for c in completions]


def caption_format_reward(completions: list[str], **fields) -> list[float | None]:
    """1.0 iff the completion is `<caption>...</caption><think>...</think><answer>...</answer>`.

    MoERL-Vision describes the image in a caption before reasoning; same strict rules as `format`.

    >>> caption_format_reward(["<caption>a cat</caption><think>1 cat</think><answer>1</answer>"])
    [1.0]
    >>> caption_format_reward(["<think>1 cat</think><caption>a cat</caption><answer>1</answer>"])
    [0.0]
    """
    return [float(has_layout(c, ("caption", "think", "answer"))) for c in completions]
