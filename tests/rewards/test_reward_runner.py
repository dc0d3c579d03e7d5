"""call_reward (fallback, counts, limits, contract), load_reward, and combine."""

import logging
import math
import threading
import time

import pytest

from vlrl.rewards import REWARDS, RewardError, call_reward, combine, load_reward
from vlrl.rewards.deadline import RewardTimeout, deadline
from vlrl.rewards.runner import RewardLoadError


def lengths(completions, **fields):
    return [float(len(c)) for c in completions]


def test_call_reward_passes_scores_through():
    scores, stats = call_reward(lengths, ["ab", "c"], {"answer": ["x", "y"]}, fallback=0.0, timeout_s=5)
    assert scores == [2.0, 1.0]
    assert stats == {"errors": 0, "timeouts": 0, "not_applicable": 0}


def test_raising_reward_gets_fallback_per_sample(caplog):
    def picky(completions, **fields):
        if "boom" in completions:
            raise RuntimeError("cannot score boom")
        return [1.0] * len(completions)

    with caplog.at_level(logging.WARNING, logger="vlrl.rewards.runner"):
        scores, stats = call_reward(picky, ["ok", "boom", "ok"], {}, fallback=-0.5, timeout_s=5)
    assert scores == [1.0, -0.5, 1.0]  # only the failing sample gets the fallback
    assert stats["errors"] == 1
    assert "picky" in caplog.text and "cannot score boom" in caplog.text


def test_none_means_not_applicable_not_failure():
    scores, stats = call_reward(
        lambda completions, **f: [None, 1.0], ["a", "b"], {}, fallback=-1.0, timeout_s=5
    )
    assert scores == [None, 1.0]
    assert stats == {"errors": 0, "timeouts": 0, "not_applicable": 1}


def test_non_finite_scores_get_fallback():
    scores, stats = call_reward(lambda completions, **f: [math.nan, math.inf, 2], ["a", "b", "c"], {}, 0.0, 5)
    assert scores == [0.0, 0.0, 2.0]
    assert stats["errors"] == 2


def test_slow_sample_times_out():
    def slow_on_b(completions, **fields):
        if "b" in completions:
            time.sleep(10)
        return [1.0] * len(completions)

    start = time.monotonic()
    scores, stats = call_reward(slow_on_b, ["a", "b"], {}, fallback=0.0, timeout_s=0.2)
    # batch (0.2 s) + "a" alone + "b" alone (0.2 s): well under the 10 s sleep
    assert time.monotonic() - start < 2.0
    assert scores == [1.0, 0.0]
    assert stats["timeouts"] == 1


def test_slow_sample_times_out_off_the_main_thread():
    out = []
    worker = threading.Thread(
        target=lambda: out.append(call_reward(lambda c, **f: time.sleep(3) or [1.0], ["a"], {}, 0.0, 0.2))
    )
    start = time.monotonic()
    worker.start()
    worker.join(5)
    assert time.monotonic() - start < 2.0  # the waiting stops; the abandoned sleep finishes alone
    assert out == [([0.0], {"errors": 0, "timeouts": 1, "not_applicable": 0})]


def test_nested_deadlines_keep_the_outer_limit():
    start = time.monotonic()
    # the inner limit (5 s) cannot extend the outer one (0.3 s)
    with pytest.raises(RewardTimeout), deadline(0.3), deadline(5.0):
        time.sleep(2)
    assert time.monotonic() - start < 1.0
    with pytest.raises(RewardTimeout), deadline(0.3):
        with deadline(0.05):
            pass
        time.sleep(2)  # the outer timer was restored after the inner block
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda completions, **f: [1.0], "must return a list of 2"),
        (lambda completions, **f: 1.0, "must return a list of 2"),
        (lambda completions, **f: ["1", "2"], "returned str at index 0"),
    ],
)
def test_contract_violations_name_the_reward(bad, message):
    with pytest.raises(RewardError, match=f"reward 'mine' {message}"):
        call_reward(bad, ["a", "b"], {}, 0.0, 5, name="mine")


def test_fields_must_be_per_sample_lists():
    with pytest.raises(ValueError, match="field 'max_new_tokens'"):
        call_reward(lengths, ["a", "b"], {"max_new_tokens": 512}, 0.0, 5)
    with pytest.raises(ValueError, match="field 'answer'"):
        call_reward(lengths, ["a", "b"], {"answer": ["x"]}, 0.0, 5)


def test_builtin_rewards_run_through_call_reward():
    fields = {"answer": ["3", [1, 2, 3, 4]], "choices": [None, None]}
    scores, stats = call_reward(
        REWARDS["accuracy"], ["<answer>3</answer>", "<answer>x</answer>"], fields, 0.0, 5
    )
    assert scores == [1.0, None]
    assert stats["not_applicable"] == 1


USER_REWARDS = """
def has_cat(completions, **fields):
    return [1.0 if "cat" in c else 0.0 for c in completions]

def fragile(completions, **fields):
    return [1.0 / len(c) for c in completions]

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_REWARDS)
    return path


def test_load_reward_by_name():
    assert load_reward("accuracy") is REWARDS["accuracy"]


def test_load_user_reward_from_file(user_file):
    fn = load_reward(f"{user_file}:has_cat")
    assert fn(["a cat", "a dog"]) == [1.0, 0.0]


def test_raising_user_reward_gets_fallback(user_file):
    scores, stats = call_reward(
        load_reward(f"{user_file}:fragile"), ["ab", ""], {}, fallback=0.0, timeout_s=5
    )
    assert scores == [0.5, 0.0]
    assert stats["errors"] == 1


def test_load_reward_errors_name_the_problem(user_file, tmp_path):
    with pytest.raises(RewardLoadError, match="unknown reward 'acuracy' \\(did you mean 'accuracy'\\?\\)"):
        load_reward("acuracy")
    with pytest.raises(RewardLoadError, match="missing.py"):
        load_reward(f"{tmp_path / 'missing.py'}:fn")
    with pytest.raises(RewardLoadError, match="my_rewards.py has no function 'nope'"):
        load_reward(f"{user_file}:nope")
    with pytest.raises(RewardLoadError, match="'NOT_A_FUNCTION' in reward file .*my_rewards.py"):
        load_reward(f"{user_file}:NOT_A_FUNCTION")


def test_combine_weights_and_none():
    scores = {"accuracy": [1.0, None, 0.0], "format": [1.0, 1.0, 0.0], "overlong": [0.0, -0.5, -1.0]}
    # sample 1: 0 (None) + 0.5 * 1 + 2 * -0.5 = -0.5
    assert combine(scores, {"format": 0.5, "overlong": 2.0}) == [1.5, -0.5, -2.0]
    assert combine(scores) == [2.0, 0.5, -1.0]


def test_combine_rejects_mismatches():
    with pytest.raises(ValueError, match="unknown rewards \\['fromat'\\]"):
        combine({"format": [1.0]}, {"fromat": 1.0})
    with pytest.raises(ValueError, match="different numbers of samples"):
        combine({"format": [1.0], "accuracy": [1.0, 0.0]})
