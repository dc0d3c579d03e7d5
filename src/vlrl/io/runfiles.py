"""The files of a run folder (`train.output_dir`): their names, for the writers and the readers alike."""

from __future__ import annotations

from pathlib import Path

from vlrl.io.jsonl import read_jsonl

METRICS_FILE = "metrics.jsonl"
"""One record per logged step: {"step": s, metric: value, ...} (vlrl.training.metrics)."""

ALARMS_FILE = "alarms.jsonl"
"""One record per alarm raised (vlrl.monitoring.alarms)."""

ROLLOUTS_FILE = "rollouts.jsonl"
"""Sampled prompts with their G responses, rewards and advantages (vlrl.monitoring.rollouts)."""

CONFIG_FILE = "config.yaml"
"""The run's resolved config, written at start."""


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file in file order, as logged (non-finite values are None);
    a killed run's partial last line is skipped."""
    return read_jsonl(path)
