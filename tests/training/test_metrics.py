"""MetricsLogger: JSON lines, truncation on resume, NaN handling, progress line, optional extras."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types

import pytest

from vlrl.cli import main
from vlrl.config import ConfigError
from vlrl.io import METRICS_FILE, read_metrics
from vlrl.training.metrics import MetricsLogger


def _logger(tmp_path, **kw):
    return MetricsLogger(tmp_path, progress=False, **kw)


def test_lines_are_written_flushed_and_read_back(tmp_path):
    logger = _logger(tmp_path)
    logger.log(1, {"reward/total/mean": 0.5, "timing_s/gen": 2})
    # Flushed at once: a killed run keeps it without close().
    assert read_metrics(tmp_path / METRICS_FILE) == [
        {"step": 1, "reward/total/mean": 0.5, "timing_s/gen": 2.0}
    ]
    logger.log(2, {"reward/total/mean": 0.75})
    logger.close()
    assert [r["step"] for r in read_metrics(tmp_path / METRICS_FILE)] == [1, 2]


def test_non_finite_values_are_null(tmp_path):
    with _logger(tmp_path) as logger:
        logger.log(1, {"loss": math.nan, "kl": math.inf, "ok": 1.5})
    line = (tmp_path / METRICS_FILE).read_text()
    assert json.loads(line) == {"step": 1, "loss": None, "kl": None, "ok": 1.5}
    assert "NaN" not in line and "Infinity" not in line


def test_truncate_after_drops_later_steps_and_appends_after(tmp_path):
    with _logger(tmp_path) as logger:
        for step in range(1, 6):
            logger.log(step, {"x": step})
    with _logger(tmp_path) as resumed:  # resumed from the checkpoint of step 3
        resumed.truncate_after(3)
        resumed.log(4, {"x": 40})
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path / METRICS_FILE)] == [
        (1, 1),
        (2, 2),
        (3, 3),
        (4, 40),
    ]


def test_a_partial_last_line_of_a_killed_run_is_dropped(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x"')
    assert read_metrics(path) == [{"step": 1, "x": 1.0}]
    with _logger(tmp_path) as logger:
        logger.log(2, {"x": 2.0})
    assert read_metrics(path) == [{"step": 1, "x": 1.0}, {"step": 2, "x": 2.0}]


def test_a_corrupt_line_names_file_and_line(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        read_metrics(path)


def test_tqdm_progress_goes_to_stderr(tmp_path, capsys):
    pytest.importorskip("tqdm")
    with MetricsLogger(tmp_path, jsonl=False, total_steps=10) as logger:
        logger.log(4, {"reward/total/mean": 0.5})
        logger.log(5, {"reward/total/mean": 0.75})
    err = capsys.readouterr().err
    assert "5/10" in err and "reward 0.75" in err


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_writes_events(tmp_path):
    with _logger(tmp_path, tensorboard=True, config={"train": {"lr": 1e-5}}) as logger:
        logger.log(1, {"reward/total/mean": 0.5, "loss": math.nan})
        logger.truncate_after(0)
        logger.log(1, {"reward/total/mean": 0.6})
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with _logger(tmp_path, wandb=True, config={"train": {"lr": 1e-5}}) as logger:
        logger.log(1, {"reward/total/mean": 0.5})
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_tensorboard_sink_purges_redone_steps(tmp_path, monkeypatch):
    """The sink's calls, against a stand-in writer with SummaryWriter's signature."""
    calls = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            calls.append(("open", purge_step))

        def add_text(self, tag, text):
            calls.append(("text", tag))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    with _logger(tmp_path, tensorboard=True, config={"train": {"lr": 1e-5}}) as logger:
        logger.truncate_after(3)
        logger.log(4, {"loss": 0.5})
    # Resuming after step 3 reopens the writer with purge_step 4: earlier events from step 4 on are hidden.
    assert calls == [
        ("open", None),
        ("text", "config"),
        ("close",),
        ("open", 4),
        ("loss", 0.5, 4),
        ("close",),
    ]


def test_wandb_sink_calls(tmp_path, monkeypatch):
    """The sink's calls, against a stand-in wandb module."""
    calls = []

    class Run:
        id = "run1"

        def log(self, metrics, step):
            calls.append(("log", metrics, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    with _logger(tmp_path, wandb=True, wandb_project="p", config={"a": 1}) as logger:
        logger.log(2, {"loss": 1})
    init_kwargs = {"project": "p", "dir": str(tmp_path), "name": tmp_path.name, "config": {"a": 1}}
    assert calls == [("init", init_kwargs), ("log", {"loss": 1.0}, 2), ("finish",)]


@pytest.mark.parametrize(
    ("extra", "module"), [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")]
)
def test_a_missing_extra_names_the_key_and_the_pip_command(tmp_path, monkeypatch, extra, module):
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when a package is absent
    with pytest.raises(ConfigError) as caught:
        _logger(tmp_path / "run", **{extra: True})
    assert str(caught.value) == f"logging.{extra}: needs the {extra} package: pip install 'vlrl[{extra}]'"
    assert not (tmp_path / "run").exists()  # raised before anything was written


def test_a_missing_extra_stops_vlrl_train_in_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    config = tmp_path / "grpo.yaml"
    # No model at model.path: had the model been loaded first, the error would be about that.
    config.write_text(
        f"model:\n  path: {tmp_path / 'no_model'}\ndata:\n  train: {tmp_path / 'no_data.jsonl'}\n"
        f"train:\n  output_dir: {tmp_path / 'run'}\nlogging:\n  tensorboard: true\n"
    )
    assert main(["train", str(config)]) == 2
    assert capsys.readouterr().err == (
        "vlrl train: error: logging.tensorboard: needs the tensorboard package: "
        "pip install 'vlrl[tensorboard]'\n"
    )
