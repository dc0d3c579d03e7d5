"""vlrl.io.progress: the progress displays of training runs and long commands."""

import doctest
import io
import sys

from vlrl.io import ProgressBar, progress, progress_text, step_progress


def test_doctests():
    assert doctest.testmod(progress).failed == 0


def test_progress_text_shows_the_key_numbers_in_order():
    metrics = {
        "timing_s/step": 1.234,
        "response_length/mean": 87.25,
        "reward/total/mean": 0.53125,
        "other": 9,
        "loss": None,  # a non-finite value, as logged
    }
    assert progress_text(metrics) == "reward 0.531  len 87.2  s/step 1.23"


def test_the_sft_progress_shows_the_loss():
    assert progress_text({"loss": 1.5, "lr": 0.001}) == "loss 1.5"


def test_step_progress_without_tqdm_gives_position_eta_and_numbers(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now fails
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    display = progress.StepProgress(total=10, stream=out)
    display.log(3, {"reward/accuracy/mean": 0.25})
    display.log(5, {"reward/accuracy/mean": 0.5})  # 2 steps in 10 s: 5 more take 25 s
    display.close()
    assert out.getvalue() == "step 3/10  acc 0.25\nstep 5/10  ETA 25s  acc 0.5\n"  # a file: one line each


def test_item_progress_without_tqdm_counts_and_estimates(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    clock = iter([0.0, 4.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    with ProgressBar(10, "eval mathvista", unit="question", stream=out) as bar:
        bar.update(4, acc=0.5)  # 4 in 4 s: 6 more take 6 s
    assert out.getvalue() == "eval mathvista: 4/10 questions  ETA 6s  acc 0.5\n"


def test_tqdm_bars_go_to_the_given_stream():
    out = io.StringIO()
    with ProgressBar(3, "synth counting", unit="image", stream=out) as bar:
        bar.update(3)
    assert "synth counting" in out.getvalue() and "3/3" in out.getvalue()
    display = step_progress(10)
    assert display.total == 10


def test_a_disabled_bar_writes_nothing():
    out = io.StringIO()
    with ProgressBar(3, "x", enabled=False, stream=out) as bar:
        bar.update(3)
    assert out.getvalue() == "" and bar.done == 3
