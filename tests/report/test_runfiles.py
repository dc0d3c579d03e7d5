"""Broken run files: `vlrl report` names the file and line in one message, and skips (with a
warning) only the partial last line a killed run leaves behind."""

import json
import logging
from pathlib import Path

import pytest

from vlrl.cli import main
from vlrl.report import build_report
from vlrl.report.runfiles import RunFileError, read_run


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def test_a_truncated_last_line_is_skipped_with_a_warning(run_dir, caplog):
    _append(run_dir / "metrics.jsonl", '{"step": 31, "acc": 0.4')  # killed mid-write: no newline
    _append(run_dir / "rollouts.jsonl", '{"step": 40, "responses": [{"text": "cut')
    with caplog.at_level(logging.WARNING, logger="vlrl.report.runfiles"):
        run = read_run(run_dir)
    assert [r["step"] for r in run.metrics] == list(range(1, 31))
    assert len(run.rollouts) == 6  # steps 10, 20, 30; two groups each
    assert run.warnings == [
        f"{run_dir / 'metrics.jsonl'}:31: skipped the incomplete last line of a run killed while writing it",
        f"{run_dir / 'rollouts.jsonl'}:7: skipped the incomplete last line of a run killed while writing it",
    ]
    assert caplog.messages == run.warnings
    assert "metrics.jsonl:31: skipped the incomplete last line" in build_report(run_dir)


def test_a_cut_multibyte_character_at_the_end_is_a_truncated_line_too(run_dir):
    with (run_dir / "alarms.jsonl").open("ab") as f:
        f.write('{"step": 3, "name": "x", "message": "é'.encode()[:-1])
    assert len(read_run(run_dir).alarms) == 1
    assert read_run(run_dir).warnings[0].startswith(f"{run_dir / 'alarms.jsonl'}:2: skipped")


@pytest.mark.parametrize(
    ("file", "line", "message"),
    [
        ("metrics.jsonl", "not json at all\n", r"not a JSON line \(Expecting value, column 1\)"),
        ("metrics.jsonl", "[1, 2]\n", "expected a JSON object, got a list"),
        ("metrics.jsonl", '{"acc": 0.5}\n', "no 'step'"),
        ("metrics.jsonl", '{"step": "31", "acc": 0.5}\n', "'step' must be an integer, got \"31\""),
        (
            "metrics.jsonl",
            '{"step": 31, "acc": "high"}\n',
            "metric 'acc' must be a number or null, got \"high\"",
        ),
        ("alarms.jsonl", '{"step": 5, "name": "kl_spike", "message": "x"}\n', "no 'severity'"),
        (
            "alarms.jsonl",
            '{"step": 5, "name": 3, "message": "x", "severity": "warning"}\n',
            "'name' must be a string",
        ),
        ("rollouts.jsonl", '{"step": 40, "images": "a.png"}\n', "'images' must be a list of paths"),
        ("rollouts.jsonl", '{"step": 40, "responses": {}}\n', "'responses' must be a list"),
        (
            "rollouts.jsonl",
            '{"step": 40, "responses": [{"total": 1.0}, {"advantage": "big"}]}\n',
            "responses\\[1\\]: 'advantage' must be a number or null",
        ),
        (
            "rollouts.jsonl",
            '{"step": 40, "responses": [{"rewards": {"format": [1]}}]}\n',
            r"responses\[0\]: reward 'format' must be a number or null, got \[1\]",
        ),
    ],
)
def test_a_bad_line_names_file_and_line(run_dir, file, line, message):
    path = run_dir / file
    lines = path.read_text().splitlines(keepends=True)
    # In the middle of the file, followed by good lines: not mistaken for a killed run's last line.
    path.write_text("".join(lines[:1]) + line + "".join(lines[1:]))
    with pytest.raises(RunFileError, match=rf"^{path}:2: {message}"):
        read_run(run_dir)


def test_a_bad_last_line_with_its_newline_is_an_error_not_a_skip(run_dir):
    _append(run_dir / "metrics.jsonl", '{"step": 31,\n')
    with pytest.raises(RunFileError, match=r"metrics.jsonl:31: not a JSON line"):
        read_run(run_dir)


def test_nan_and_infinity_read_as_gaps(run_dir):
    _append(run_dir / "metrics.jsonl", '{"step": 31, "kl": NaN, "grad_norm": Infinity}\n')
    assert read_run(run_dir).metrics[-1] == {"step": 31, "kl": None, "grad_norm": None}


def test_a_folder_without_metrics_points_at_the_runs_inside(tmp_path):
    for name in ("sft", "grpo"):
        (tmp_path / "demo" / name).mkdir(parents=True)
        (tmp_path / "demo" / name / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(FileNotFoundError) as caught:
        read_run(tmp_path / "demo")
    assert str(caught.value) == (
        f"{tmp_path / 'demo'}: no metrics.jsonl, so not a run folder; run folders inside it: "
        f"{tmp_path / 'demo' / 'grpo'}, {tmp_path / 'demo' / 'sft'}"
    )


def test_an_empty_metrics_file_is_one_message(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(RunFileError, match=f"^{tmp_path / 'metrics.jsonl'}: no logged step yet$"):
        read_run(tmp_path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda run: run / "nope", "{run}/nope: no such run folder"),
        (lambda run: run / "metrics.jsonl", "{run}/metrics.jsonl: not a folder; give the run folder"),
        (lambda run: _broken(run), "{run}/alarms.jsonl:1: 'step' must be an integer, got null"),
    ],
)
def test_vlrl_report_prints_one_line(run_dir, capsys, make, message):
    assert main(["report", str(make(run_dir))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlrl report: error: " + message.format(run=run_dir))
    assert err.count("\n") == 1


def _broken(run: Path) -> Path:
    (run / "alarms.jsonl").write_text(
        json.dumps({"step": None, "name": "a", "message": "b", "severity": "c"}) + "\n"
    )
    return run


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model:\n  path: [a\nrollout: 2\n",
            r"config.yaml:3: not YAML \(expected ',' or '\]', but got ':'\)$",
        ),
        ("- a\n- b\n", r"config.yaml: expected a mapping of config sections, got a list$"),
    ],
)
def test_a_broken_config_yaml_is_one_line_naming_it(run_dir, text, message):
    (run_dir / "config.yaml").write_text(text)
    with pytest.raises(RunFileError, match=message):
        read_run(run_dir)


def test_config_yaml_that_is_not_utf8_is_named(run_dir):
    (run_dir / "config.yaml").write_bytes(b"model:\n  path: \xff\n")
    with pytest.raises(RunFileError, match=r"config.yaml: not UTF-8 text$"):
        read_run(run_dir)
