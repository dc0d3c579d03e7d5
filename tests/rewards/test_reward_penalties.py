"""overlong, repetition, language_mix, no_eos, min_length with hand-computed values."""

import pytest

from vlrl.rewards import REWARDS


@pytest.mark.parametrize(
    ("length", "limit", "buffer", "expected"),
    [
        # L_max 100, L_cache 20: free up to 80, then (80 - |y|) / 20, -1 from 100 on.
        (50, 100, 20, 0.0),
        (80, 100, 20, 0.0),
        (85, 100, 20, -0.25),
        (95, 100, 20, -0.75),
        (100, 100, 20, -1.0),
        (101, 100, 20, -1.0),
        # no buffer: a hard limit only
        (100, 100, 0, 0.0),
        (101, 100, 0, -1.0),
    ],
)
def test_overlong(length, limit, buffer, expected):
    got = REWARDS["overlong"](
        ["x"], completion_length=[length], max_new_tokens=[limit], overlong_buffer=[buffer]
    )
    assert got == [pytest.approx(expected)]


def test_overlong_needs_its_fields():
    with pytest.raises(TypeError, match="max_new_tokens"):
        REWARDS["overlong"](["x"], completion_length=[1], overlong_buffer=[0])


def test_repetition():
    completions = [
        "the cat sat on the mat",  # 4 trigrams, all unique
        "go go go go go",  # 3 trigrams, 1 unique: -(1 - 1/3)
        "a b a b a b",  # 4 trigrams, 2 unique: -(1 - 2/4)
        "Go go GO go",  # lower-cased: 2 trigrams, 1 unique
        "too short",
        "",
    ]
    assert REWARDS["repetition"](completions) == pytest.approx([0.0, -2 / 3, -0.5, -0.5, 0.0, 0.0])


def test_repetition_ngram_field():
    # bigrams of "a b a b": (a b) (b a) (a b): 3 total, 2 unique
    assert REWARDS["repetition"](["a b a b"], repetition_ngram=[2]) == [pytest.approx(-1 / 3)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>The cat is black.</think><answer>black</answer>", 0.0),
        ("<think>这只猫是黑色的。</think><answer>黑色</answer>", 0.0),  # tags are not Latin words
        ("这只猫是 black 的", -1.0),  # 5 CJK, 5 Latin letters
        ("The cat is black, 很", 0.0),  # 1 CJK of 1 + 13 letters: 0.07 <= 0.1
        ("The cat 是黑色", -1.0),  # 3 CJK of 3 + 6
        ("设 x = 3，则 \\frac{x}{2} = 1.5", 0.0),  # LaTeX commands and variables are not words
        ("ネコは黒い cat", -1.0),  # kana count as CJK
        ("", 0.0),
    ],
)
def test_language_mix(text, expected):
    assert REWARDS["language_mix"]([text]) == [expected]


def test_language_mix_threshold_field():
    assert REWARDS["language_mix"](["The cat is black, 很"], language_mix_threshold=[0.05]) == [-1.0]


def test_no_eos():
    assert REWARDS["no_eos"](["a", "b", "c"], finish_reason=["stop", "length", "abort"]) == [0.0, -1.0, 0.0]


def test_min_length():
    completions = [
        "<think>one two three four five</think><answer>5</answer>",
        "<think>one two three four</think><answer>4</answer>",
        "<think></think><answer>0</answer>",
        "<answer>no think</answer>",
    ]
    assert REWARDS["min_length"](completions) == [0.0, -1.0, -1.0, -1.0]
    assert REWARDS["min_length"](completions[1:2], min_think_words=[4]) == [0.0]
