"""Reading a run folder for the report, every line checked: a broken file is one error naming the
file and line (`runs/x/metrics.jsonl:7: no 'step'`), never a traceback from the page code.

A last line that lacks its newline and is not JSON is what a run killed while writing leaves
behind: it is skipped with a warning (logged and shown on the page), because the report of a
crashed run is when one needs it most. Any other bad line is a `RunFileError`. NaN and Infinity,
which some JSON writers produce, read as null: a gap, as the trainer writes non-finite numbers.
config.yaml (optional) must be a YAML mapping, as the trainer writes it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vlrl.io import ALARMS_FILE, CONFIG_FILE, METRICS_FILE, ROLLOUTS_FILE
from vlrl.monitoring.alarms import Alarm

logger = logging.getLogger(__name__)


Check = Callable[[dict], str | None]  # a record -> what is wrong with it, or None


class RunFileError(ValueError):
    """A line of a run file that cannot be read: `<file>:<line>: <what is wrong>`."""


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number_or_null(value) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _step_problem(record: dict) -> str | None:
    if "step" not in record:
        return "no 'step'"
    return None if _is_int(record["step"]) else f"'step' must be an integer, got {_show(record['step'])}"


def _metric_problem(record: dict) -> str | None:
    wrong = next((k for k, v in record.items() if k != "step" and not _is_number_or_null(v)), None)
    return None if wrong is None else f"metric '{wrong}' must be a number or null, got {_show(record[wrong])}"


def metrics_problem(record: dict) -> str | None:
    """A metrics.jsonl record: an integer step and numbers (or null) for everything else."""
    return _step_problem(record) or _metric_problem(record)


def _alarm_fields_problem(record: dict) -> str | None:
    for key in ("name", "message", "severity"):
        if key not in record:
            return f"no '{key}'"
        if not isinstance(record[key], str):
            return f"'{key}' must be a string, got {_show(record[key])}"
    return None


def alarm_problem(record: dict) -> str | None:
    """An alarms.jsonl record: the fields of `Alarm`, an integer step and three strings."""
    return _step_problem(record) or _alarm_fields_problem(record)


def _response_problem(response) -> str | None:
    if not isinstance(response, dict):
        return f"must be an object, got {_show(response)}"
    for key in ("total", "advantage"):
        if not _is_number_or_null(response.get(key)):
            return f"'{key}' must be a number or null, got {_show(response[key])}"
    rewards = response.get("rewards", {})
    if not isinstance(rewards, dict):
        return f"'rewards' must be an object of reward name -> score, got {_show(rewards)}"
    wrong = next((name for name, score in rewards.items() if not _is_number_or_null(score)), None)
    return (
        None if wrong is None else f"reward '{wrong}' must be a number or null, got {_show(rewards[wrong])}"
    )


def _rollout_fields_problem(record: dict) -> str | None:
    images = record.get("images", [])
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        return f"'images' must be a list of paths, got {_show(images)}"
    responses = record.get("responses", [])
    if not isinstance(responses, list):
        return f"'responses' must be a list, got {_show(responses)}"
    for i, response in enumerate(responses):
        problem = _response_problem(response)
        if problem:
            return f"responses[{i}]: {problem}"
    return None


def rollout_problem(record: dict) -> str | None:
    """A rollouts.jsonl record (see `vlrl.monitoring.rollouts`): what the viewer computes with
    must have its type; text fields are shown as text whatever they hold."""
    return _step_problem(record) or _rollout_fields_problem(record)


def _json_type(value) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def read_jsonl(path: Path, check: Check, warnings: list[str]) -> list[dict]:
    """The records of one run file, each passing `check`; a killed run's partial last line is
    skipped and noted in `warnings`."""
    data = path.read_bytes()
    lines = data.split(b"\n")  # the last item is b"" when the file ends with its newline
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"), parse_constant=lambda _: None)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if number == len(lines):
                warnings.append(
                    f"{path}:{number}: skipped the incomplete last line of a run killed while writing it"
                )
                logger.warning("%s", warnings[-1])
                continue
            what = (
                f"{exc.msg}, column {exc.colno}"
                if isinstance(exc, json.JSONDecodeError)
                else "not UTF-8 text"
            )
            raise RunFileError(f"{path}:{number}: not a JSON line ({what})") from None
        if not isinstance(record, dict):
            raise RunFileError(f"{path}:{number}: expected a JSON object, got a {_json_type(record)}")
        problem = check(record)
        if problem:
            raise RunFileError(f"{path}:{number}: {problem}")
        records.append(record)
    return records


def read_config(path: Path) -> tuple[str, dict]:
    """config.yaml's text (shown as written) and its mapping (read for the summary)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RunFileError(f"{path}: not UTF-8 text") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise RunFileError(f"{path}{where}: not YAML ({problem})") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise RunFileError(f"{path}: expected a mapping of config sections, got a {_json_type(tree)}")
    return text, tree


@dataclass
class RunFiles:
    """What a run folder holds for the report; `warnings` lists the lines that were skipped.
    `config_text` is None when the folder has no config.yaml (then `config` is empty)."""

    metrics: list[dict]
    alarms: list[Alarm]
    rollouts: list[dict]
    warnings: list[str] = field(default_factory=list)
    config_text: str | None = None
    config: dict = field(default_factory=dict)


def _run_folders_below(folder: Path) -> list[str]:
    """Run folders one or two levels down (`vlrl demo` writes runs/demo/sft and runs/demo/grpo)."""
    found = [*folder.glob(f"*/{METRICS_FILE}"), *folder.glob(f"*/*/{METRICS_FILE}")]
    return sorted(str(p.parent) for p in found)[:5]


def read_run(run_dir: Path) -> RunFiles:
    """metrics.jsonl (required: a folder without logged steps is not a run to report on),
    alarms.jsonl and rollouts.jsonl (optional), checked line by line, and config.yaml (optional)."""
    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"{run_dir}: not a folder; give the run folder (train.output_dir) that holds it"
        )
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        below = _run_folders_below(run_dir)
        hint = f"; run folders inside it: {', '.join(below)}" if below else " (is this train.output_dir?)"
        raise FileNotFoundError(f"{run_dir}: no {METRICS_FILE}, so not a run folder{hint}")
    warnings: list[str] = []
    metrics = read_jsonl(metrics_path, metrics_problem, warnings)
    if not metrics:
        raise RunFileError(f"{metrics_path}: no logged step yet")
    alarms_path, rollouts_path = run_dir / ALARMS_FILE, run_dir / ROLLOUTS_FILE
    alarms = read_jsonl(alarms_path, alarm_problem, warnings) if alarms_path.is_file() else []
    rollouts = read_jsonl(rollouts_path, rollout_problem, warnings) if rollouts_path.is_file() else []
    config_path = run_dir / CONFIG_FILE
    config_text, config = read_config(config_path) if config_path.is_file() else (None, {})
    return RunFiles(
        metrics=metrics,
        alarms=[Alarm(r["step"], r["name"], r["message"], r["severity"]) for r in alarms],
        rollouts=rollouts,
        warnings=warnings,
        config_text=config_text,
        config=config,
    )
