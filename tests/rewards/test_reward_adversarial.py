"""Hostile completions get the right score, fast, and nothing in them is executed.

Each case runs every built-in reward; the wall-clock bound is generous (the cases take
milliseconds) so that it only catches a runaway, not a slow machine. A seeded fuzz test at the end
sends thousands of generated completions through every reward in the table.
"""

import random
import threading
import time

import pytest

from vlrl.rewards import REWARDS
from vlrl.rewards.runner import call_reward

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


# ---- seeded fuzz: every reward in the table on generated hostile completions ------------------

# The range each reward's scores lie in; a reward added to the table needs its range here.
RANGES = {
    **dict.fromkeys(
        ["format", "caption_format", "accuracy", "hfrrf", "iou", "giou", "ovd_map", "ovd_map50", "count"],
        (0.0, 1.0),
    ),
    **dict.fromkeys(["overlong", "repetition", "language_mix", "no_eos", "min_length"], (-1.0, 0.0)),
}
FRAGMENTS = [
    *["<think>", "</think>", "<answer>", "</answer>", "<caption>", "</caption>", "<answer><answer>"],
    *["3", "-3", "3.0", "0.5", "1,000", "300\\%", "9^{9^{9}}", "10^{10^{10}}", "(10^6)!", "2**3**4"],
    *["\\frac{1}{2}", "\\boxed{", "}", "{", "$", "\\(", "\\)", "=", "x = 3", "4 = 3", "\\sqrt{", "\\pi"],
    *["\\text{ cm}", "^2", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\left(", "\\right)", "\\%", "**"],
    *["or more", "The answer is", "yes", "No,", "none", "B", "(b)", "[D]", "d.", "A cat", "dog"],
    *["[1, 2, 3, 4]", "[[0, 0, 10, 10]]", '{"bbox_2d": [0, 0, 10, 10], "label": "cat"}', "[]", "("],
    *["<|object_ref_start|>cat<|object_ref_end|>", "<|box_start|>(1,2),(30,40)<|box_end|>", "<ref>"],
    *["三只猫", "ありがとう", "🐱🐶", "\u202e\u200b\u0301", "\x00", "\ufeff", "\U0001f600" * 3, "\n", "\t"],
    *["__import__('os')", "eval(", "1e308", "nan", "inf", "-0", "1" * 400, "9" * 3000],
]
TRUTHS = [
    ("3", None),
    (3, None),
    ("\\frac{1}{2}", None),
    ("50\\%", None),
    ("B", ["cat", "dog", "bird", "fish"]),
    ("2\\pi", ["\\pi", "2\\pi"]),
    ("yes", None),
    ("red", None),
    ([[0, 0, 10, 10]], None),
    ([{"bbox": [0, 0, 10, 10], "label": "cat"}, {"bbox": [20, 0, 30, 10], "label": "dog"}], None),
    ([], None),
]


def fuzz_completion(rng) -> str:
    """A random mixture of fragments, at times nested or repeated into a very long string."""
    parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 12))]
    kind = rng.random()
    if kind < 0.05:
        parts = [rng.choice(FRAGMENTS) * rng.randint(1_000, 20_000)]  # huge
    elif kind < 0.15:
        depth = rng.randint(2, 60)  # nested: "\\boxed{\\boxed{...}}", "<answer><answer>..."
        opener, closer = rng.choice([("\\boxed{", "}"), ("<answer>", "</answer>"), ("{", "}"), ("(", ")")])
        parts = [opener * depth, *parts, closer * depth]
    elif kind < 0.6:
        parts = ["<think>", *parts[:3], "</think><answer>", *parts[3:], "</answer>"]
    return "".join(parts)


def echo(rng, truth) -> str:
    """An answer built around the truth, so that the matching paths run, not only the failures."""
    decorated = rng.choice(
        ["{}", "${}$", "\\boxed{{{}}}", "({})", "{} or more", "x = {}", "The answer is {}."]
    )
    return f"<think>t</think><answer>{decorated.format(truth)}{rng.choice(['', *FRAGMENTS])}</answer>"


def fuzz_batch(seed: int, n: int) -> tuple[list[str], dict[str, list]]:
    rng = random.Random(seed)
    truths = [rng.choice(TRUTHS) for _ in range(n)]
    completions = [echo(rng, t) if rng.random() < 0.2 else fuzz_completion(rng) for t, _ in truths]
    fields = {
        "box_convention": [rng.choice(["pixels", "norm1000", "resized_abs"]) for _ in range(n)],
        "image_size": [[rng.randint(1, 2000), rng.randint(1, 2000)] for _ in range(n)],
        "model_image_size": [[rng.randint(28, 2000), rng.randint(28, 2000)] for _ in range(n)],
        "count_tolerance": [rng.randint(0, 2) for _ in range(n)],
        "answer": [t for t, _ in truths],
        "choices": [c for _, c in truths],
        "completion_length": [rng.randint(0, 300) for _ in range(n)],
        "max_new_tokens": [256] * n,
        "overlong_buffer": [rng.choice([0, 64]) for _ in range(n)],
        "finish_reason": [rng.choice(["stop", "length"]) for _ in range(n)],
    }
    return completions, fields


def score_all(completions, fields) -> dict[str, list[float | None]]:
    scores = {}
    for name, fn in REWARDS.items():
        scores[name], stats = call_reward(fn, completions, fields, name=name)
        assert stats["errors"] == stats["timeouts"] == 0, f"reward '{name}': {stats}"
    return scores


def test_fuzzed_completions_through_every_reward():
    assert set(RANGES) == set(REWARDS), "give each reward in the table its range in RANGES"
    # CPU time, not wall time: the bound is for a runaway reward, not for a busy machine.
    start = time.process_time()
    completions, fields = fuzz_batch(seed=0, n=2000)
    scores = score_all(completions, fields)
    for name, values in scores.items():
        low, high = RANGES[name]
        for completion, value in zip(completions, values, strict=True):
            assert value is None or (type(value) is float and low <= value <= high), (name, completion[:200])
    for i, completion in enumerate(completions):
        # hfrrf is format and accuracy together; accuracy and hfrrf agree on applicability.
        if scores["hfrrf"][i] == 1.0:
            assert scores["format"][i] == scores["accuracy"][i] == 1.0, completion[:200]
        assert (scores["hfrrf"][i] is None) == (scores["accuracy"][i] is None)
    # Deterministic: the same inputs score the same, in a batch of another size too.
    head = slice(0, 300)
    again = score_all(completions[head], {k: v[head] for k, v in fields.items()})
    assert again == {name: values[head] for name, values in scores.items()}
    assert time.process_time() - start < 30.0


def test_fuzzed_words_after_a_right_number_make_it_wrong():
    # Seeded: random numbers, each right alone, followed by random lower-case words (five letters
    # or more, so no unit of measurement), are wrong: the answer says more than the number.
    rng = random.Random(1)
    numbers = [
        str(rng.randint(-999, 999)) if rng.random() < 0.5 else f"{rng.uniform(-99, 99):.2f}"
        for _ in range(60)
    ]
    words = ["".join(rng.choice("bcdfgjkpqvwxz") for _ in range(rng.randint(5, 8))) for _ in range(60)]
    right = [f"<answer>{n}</answer>" for n in numbers]
    padded = [f"<answer>{n} {w}</answer>" for n, w in zip(numbers, words, strict=True)]
    accuracy = REWARDS["accuracy"]
    assert accuracy(right, answer=numbers) == [1.0] * 60
    assert accuracy(padded, answer=numbers) == [0.0] * 60
