"""`vlrl demo` stopped by Ctrl-C: one line on stderr and the signal's exit code, never a traceback."""

from __future__ import annotations

import signal

import vlrl.cli.demo
from vlrl.cli import main
from vlrl.training.guards import Interrupted


def test_ctrl_c_inside_a_trainer_prints_the_train_command_line(monkeypatch, tmp_path, capsys):
    message = "stopped by SIGINT after step 2; saved runs/demo/grpo/checkpoints/step_000002"

    def interrupted(settings):
        raise Interrupted(message, signal.SIGINT)

    monkeypatch.setattr(vlrl.cli.demo, "run_demo", interrupted)
    assert main(["demo", "--out", str(tmp_path)]) == 128 + signal.SIGINT
    assert capsys.readouterr().err == f"vlrl demo: {message}\n"


def test_ctrl_c_outside_a_trainer_is_one_line_too(monkeypatch, tmp_path, capsys):
    def ctrl_c(settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(vlrl.cli.demo, "run_demo", ctrl_c)
    assert main(["demo", "--out", str(tmp_path)]) == 128 + signal.SIGINT
    assert capsys.readouterr().err == "vlrl demo: stopped by SIGINT\n"
