"""Hostile completions get the right score, fast, and nothing in them is executed.

Each case runs every built-in reward; the wall-clock bound is generous (the cases take
milliseconds) so that it only catches a runaway, not a slow machine.
"""

import threading
import time

import pytest

from vlrl.rewards import REWARDS

FIELDS = {
    "completion_length": [10],
    "max_new_tokens": [100],
    "overlong_buffer": [10],
    "finish_reason": ["stop"],
}


def run_all(completion: str, truth) -> dict[str, float | None]:
    start = time.monotonic()
    scores = {name: fn([completion], answer=[truth], **FIELDS)[0] for name, fn in REWARDS.items()}
    assert time.monotonic() - start < 5.0
    return scores


@pytest.mark.parametrize(
    "payload",
    [
        "\\boxed{__import__('os').system('touch {marker}')}",
        "__import__('os').system('touch {marker}')",
        "$__import__('os').system('touch {marker}')$",
        "\\boxed{eval(\"__import__('os').system('touch {marker}')\")}",
        "1 + __import__('os').system('touch {marker}')",
    ],
)
def test_code_is_never_executed(tmp_path, payload):
    marker = tmp_path / "pwned"
    completion = f"<think>t</think><answer>{payload.replace('{marker}', str(marker))}</answer>"
    scores = run_all(completion, "0")
    assert not marker.exists()
    assert scores["accuracy"] == 0.0
    assert scores["format"] == 1.0


@pytest.mark.parametrize(
    "tower",
    [
        "\\boxed{9^{9^{9^{9}}}}",
        "9^{9^{9^{9}}}",
        "9**9**9**9",
        "10^{10^{10}}",
        "9^{999999999}",
        "(10^{9999})^{9999}",
        "\\sqrt{10^{10^{10}}}",
        "\\sin(10^{10^{10}})",
        "(10^6)!",
        "1000000!",
        "\\binom{10^9}{10^8}",
        "x^{10^{10}}",
    ],
)
def test_huge_numbers_are_not_evaluated(tower):
    assert run_all(f"<think>t</think><answer>{tower}</answer>", "9")["accuracy"] == 0.0


def test_moderate_powers_are_still_compared():
    assert run_all("<think>t</think><answer>2^{10}</answer>", "1024")["accuracy"] == 1.0


def test_a_megabyte_of_digits():
    digits = "1" * 1_000_000
    scores = run_all(f"<think>t</think><answer>{digits}</answer>", "1")
    assert scores["accuracy"] == 0.0
    assert scores["format"] == 1.0
    assert run_all(digits, "1")["accuracy"] == 0.0  # no tags at all
    # ...and it is still the right answer when it is the truth: compared as text, not as maths.
    assert run_all(f"<answer>{digits}</answer>", digits)["accuracy"] == 1.0


def test_a_megabyte_of_tags():
    scores = run_all("<answer>" * 125_000, "1")
    assert scores["accuracy"] == 0.0
    assert scores["format"] == 0.0
    assert run_all("<think>" + "</think><answer>" * 60_000, "1")["format"] == 0.0


def test_nested_answer_tags():
    # The innermost complete answer counts; the layout is broken, so format and hfrrf are 0.
    scores = run_all("<think>t</think><answer><answer>3</answer></answer>", "3")
    assert (scores["accuracy"], scores["format"], scores["hfrrf"]) == (1.0, 0.0, 0.0)


def test_empty_answer():
    scores = run_all("<think>t</think><answer></answer>", "3")
    assert (scores["accuracy"], scores["format"], scores["hfrrf"]) == (0.0, 1.0, 0.0)


def test_math_check_off_the_main_thread():
    # math-verify's own signal timeouts raise off the main thread; ours step aside there.
    results = []
    worker = threading.Thread(
        target=lambda: results.append(
            REWARDS["accuracy"](
                ["<answer>\\frac{6}{2}</answer>", "<answer>9^{9^{9^{9}}}</answer>"], answer=["3", "9"]
            )
        )
    )
    start = time.monotonic()
    worker.start()
    worker.join(5.0)
    assert time.monotonic() - start < 5.0
    assert results == [[1.0, 0.0]]
