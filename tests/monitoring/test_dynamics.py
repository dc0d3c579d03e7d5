"""MAYE's training dynamics on hand-made responses: lengths and reflection, split by correctness."""

import pytest

from vlrl.config.sections import MonitorSection
from vlrl.monitoring.dynamics import dynamics_metrics, has_reflection

WORDS = MonitorSection().reflection_words


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Wait, I counted twice.", True),  # case-insensitive
        ("Let me RE-CHECK the left side.", True),  # hyphenated word
        ("but\nwait, there is a fourth", True),  # a phrase across a line break
        ("Let me check the image again.", True),
        ("I should double-check this.", True),
        ("No mistake here.", True),
        ("I await the answer.", False),  # not inside a longer word
        ("The waiter brought three plates.", False),
        ("Let me verify-ish nothing", False),  # "verify-ish" is another word
        ("There are three cats.", False),
    ],
)
def test_reflection_words_match_whole_words_and_phrases(text, expected):
    assert has_reflection(text, WORDS) is expected


def test_no_reflection_words_match_nothing():
    assert not has_reflection("wait", [])
    assert dynamics_metrics(["wait"], [True], [1], [])["reflection/ratio"] == 0.0


def test_dynamics_split_by_correctness():
    texts = [
        "<think>3 cats. Wait, one is hidden: 4.</think><answer>4</answer>",  # correct, reflects
        "<think>4 cats</think><answer>4</answer>",  # correct
        "<think>Hmm, however the dog</think><answer>2</answer>",  # incorrect, reflects
        "<think>2</think><answer>2</answer>",  # incorrect
        "<think>alternatively 5</think><answer>5</answer>",  # unknown correctness, reflects
    ]
    correct = [True, True, False, False, None]
    lengths = [20, 10, 16, 4, 30]
    m = dynamics_metrics(texts, correct, lengths, WORDS)
    assert m == pytest.approx(
        {
            "response_length/mean": 16.0,  # (20 + 10 + 16 + 4 + 30) / 5
            "response_length/correct_mean": 15.0,  # (20 + 10) / 2
            "response_length/incorrect_mean": 10.0,  # (16 + 4) / 2
            "reflection/ratio": 0.6,  # 3 of 5
            "reflection/ratio_correct": 0.5,
            "reflection/ratio_incorrect": 0.5,
        }
    )


def test_a_missing_group_is_omitted_not_nan():
    m = dynamics_metrics(["4", "wait, 4"], [True, True], [1, 3], WORDS)
    assert "response_length/incorrect_mean" not in m and "reflection/ratio_incorrect" not in m
    assert m["reflection/ratio_correct"] == 0.5
    unknown = dynamics_metrics(["4"], [None], [1], WORDS)
    assert set(unknown) == {"response_length/mean", "reflection/ratio"}


def test_empty_batch_and_mismatched_lists():
    assert dynamics_metrics([], [], [], WORDS) == {}
    with pytest.raises(ValueError, match="differ in length"):
        dynamics_metrics(["a", "b"], [True], [1, 2], WORDS)
