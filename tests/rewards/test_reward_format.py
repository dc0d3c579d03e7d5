"""format / caption_format: strict layout, each tag once, in order, only whitespace outside."""

import pytest

from vlrl.rewards import REWARDS

GOOD = "<think>two cats on a mat</think><answer>2</answer>"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (GOOD, 1.0),
        ("  <think>\na\n</think>\n\n<answer> 2 </answer>\n", 1.0),  # whitespace around and between
        ("<think></think><answer></answer>", 1.0),  # structure only; min_length judges the content
        ("<answer>2</answer>", 0.0),  # no think
        ("<think>a</think>", 0.0),  # no answer
        ("<answer>2</answer><think>a</think>", 0.0),  # wrong order
        ("Sure! <think>a</think><answer>2</answer>", 0.0),  # text before
        ("<think>a</think><answer>2</answer> done", 0.0),  # text after
        ("<think>a</think> so <answer>2</answer>", 0.0),  # text between
        ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0),  # two answers
        ("<think>a<think>b</think><answer>2</answer>", 0.0),  # think opened twice
        ("<think>a</think><answer><answer>2</answer></answer>", 0.0),  # nested answer
        ("<THINK>a</THINK><ANSWER>2</ANSWER>", 0.0),  # tags are case-sensitive
        ("", 0.0),
    ],
)
def test_format(completion, expected):
    assert REWARDS["format"]([completion]) == [expected]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<caption>a mat</caption>\n<think>two cats</think>\n<answer>2</answer>", 1.0),
        (GOOD, 0.0),  # caption missing
        ("<think>two cats</think><caption>a mat</caption><answer>2</answer>", 0.0),  # caption not first
        ("<caption>a</caption><caption>b</caption><think>c</think><answer>2</answer>", 0.0),
    ],
)
def test_caption_format(completion, expected):
    assert REWARDS["caption_format"]([completion]) == [expected]


def test_unknown_fields_are_ignored():
    assert REWARDS["format"]([GOOD, "x"], answer=["2", "3"], anything=[1, 2]) == [1.0, 0.0]
