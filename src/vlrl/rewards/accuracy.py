"""Outcome rewards: is the final answer right?"""

from __future__ import annotations

from vlrl.rewards.fields import column
from vlrl.rewards.matching import answers_match
from vlrl.rewards.tags import format_reward, last_answer


def _accuracy(completion: str, truth, choices) -> float | None:
    if truth is None or isinstance(truth, list | tuple | dict):
        return None  # no truth, or boxes: a grounding reward scores this sample, not this one
    answer = last_answer(completion)
    if answer is None or not answer.strip():
        return 0.0
    return float(answers_match(answer, truth, choices))


def accuracy_reward(
    completions: list[str], answer: list, choices: list | None = None, **fields
) -> list[float | None]:
    """1.0 if the last `<answer>...</answer>` matches the ground truth `answer`, else 0.0.

    The verifiable outcome reward of R1-style RL (DeepSeek-R1, arXiv 2501.12948; R1-V; Vision-R1,
    arXiv 2503.06749). Multiple choice when the sample has `choices`, yes/no, math via math-verify,
    else normalised text (see `matching.answers_match`). No answer tag, or an empty one, scores 0.0.
    None where the truth is a list (boxes of a grounding task): not applicable.

    >>> accuracy_reward(["<think>6/2</think><answer>\\\\frac{6}{2}</answer>", "<answer>(B)</answer>",
    ...                  "no tags: 3", "<think>box</think><answer>[1, 2, 3, 4]</answer>"],
    ...                 answer=["3", "B", "3", [1, 2, 3, 4]], choices=[None, ["cat", "dog"], None, None])
    [1.0, 1.0, 0.0, None]
    """
    choices = column(choices, len(completions), None)
    return [_accuracy(c, a, ch) for c, a, ch in zip(completions, answer, choices, strict=True)]


def hfrrf_reward(
    completions: list[str], answer: list, choices: list | None = None, **fields
) -> list[float | None]:
    """Hard Formatting Result Reward (Vision-R1, arXiv 2503.06749): 1.0 only if format and answer are right.

    A single reward in place of format + accuracy, so a well-formatted wrong answer earns nothing.
    None where accuracy is not applicable.

    >>> hfrrf_reward(["<think>1+2</think><answer>3</answer>", "<answer>3</answer>",
    ...               "<think>1+2</think><answer>4</answer>"], answer=["3", "3", "3"])
    [1.0, 0.0, 0.0]
    """
    shape = format_reward(completions)
    right = accuracy_reward(completions, answer=answer, choices=choices)
    return [None if r is None else float(s == 1.0 and r == 1.0) for s, r in zip(shape, right, strict=True)]
