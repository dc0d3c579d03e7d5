"""Answer health: empty, degenerate (noise, loops) and repetitive completions."""

import pytest

from vlrl.monitoring.answers import answer_health, is_degenerate, repetition


def test_answer_health_counts_each_kind_once():
    texts = [
        "<think>two cats</think><answer>2</answer>",  # healthy
        "<think>hmm</think><answer>  </answer>",  # empty answer
        "",  # empty completion
        "<think>x</think><answer>?!?!</answer>",  # punctuation only: degenerate
        "cat " * 30,  # no answer tag, one word looped: degenerate
    ]
    m = answer_health(texts)
    assert m["answers/empty_frac"] == pytest.approx(2 / 5)
    assert m["answers/degenerate_frac"] == pytest.approx(2 / 5)
    assert 0 < m["answers/repetition"] < 1


def test_a_short_answer_is_not_degenerate():
    # Few words cannot be judged by their distinct share: "7 7" is a fine answer to "7 x 11 = ?".
    assert not is_degenerate("7 7")
    assert not is_degenerate("the answer is (B) because the red bar is the tallest one here")
    assert is_degenerate("B B B B B B B B B B B B")


def test_repetition_is_minus_the_repetition_reward():
    from vlrl.rewards import REWARDS

    for text in ["a b c a b c a b c", "one two three four five", "x " * 12, "hi"]:
        reward = REWARDS["repetition"]([text], repetition_ngram=[3])[0]
        assert repetition(text, 3) == pytest.approx(-reward)


def test_empty_batch():
    assert answer_health([]) == {}
