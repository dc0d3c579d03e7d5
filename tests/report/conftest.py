"""A crafted run folder: what the trainer writes, without training anything."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from vlrl.monitoring.alarms import Alarm, append_alarms
from vlrl.monitoring.rollouts import rollout_record, write_rollouts

XSS = "<script>alert(1)</script>"
STEPS = 30


def step_metrics(s: int) -> dict:
    """Step `s`'s metrics; six never change (the report folds them): the accuracy reward's
    failures, the clip ratio, empty answers, zero-std groups, update time and lr."""
    m = {
        "reward/format/mean": min(1.0, 0.03 * s),
        "reward/accuracy/mean": 0.1 + 0.01 * s,
        "reward/total/mean": min(1.0, 0.03 * s) + 0.1 + 0.01 * s,
        "reward/accuracy/failures": 0.0,
        "acc": 0.1 + 0.01 * s,
        "response_length/mean": 80 + s,
        "response_length/correct_mean": 70 + s,
        "response_length/incorrect_mean": 90 + s,
        "response_length/clip_ratio": 0.05,
        "reflection/ratio": 0.1 + 0.005 * s,
        "answers/empty_frac": 0.0,
        "kl": 0.01 * (1 + math.sin(s)),
        "entropy": 1.5 - 0.01 * s,
        "clip_frac": 0.02 + 0.001 * (s % 3),
        "grad_norm": None if s == 15 else 1.0 / s,  # a NaN the trainer wrote as null
        "frac_zero_std_groups": 0.3,
        "timing_s/gen": 1.9 + 0.1 * (s % 2),
        "timing_s/update": 1.0,
        "timing_s/step": 3.0 + 0.1 * (s % 2),
        "perf/throughput": 400.0 + s,
        "lr": 1e-5,
    }
    if s % 10 == 0:
        m["eval/heldout/acc"] = 0.05 * s / 10
    return {"step": s} | m


def images(root: Path) -> list[Path]:
    """A small red-circle PNG and a large blue-box one (to be downscaled in the report)."""
    small = Image.new("RGB", (64, 48), "white")
    ImageDraw.Draw(small).ellipse((8, 8, 40, 40), fill="red")
    big = Image.new("RGB", (900, 600), "white")
    ImageDraw.Draw(big).rectangle((300, 200, 600, 400), fill="blue")
    paths = [root / "small.png", root / "big.png"]
    small.save(paths[0])
    big.save(paths[1])
    return paths


def groups(step: int, image_paths: list[Path]) -> list[dict]:
    texts = [
        "<think>I see 3 circles. Wait, re-check: 3.</think><answer>3</answer>",
        f"<think>maybe {XSS}</think><answer>4 & more</answer>",
        "<think>two</think><answer>2</answer>",
        "<think>" + "loop " * 40,
    ]
    first = rollout_record(
        step=step,
        sample_id=f"count_{step}",
        images=[str(image_paths[0])],
        prompt="How many <red> circles are there?",
        answer=3,
        texts=texts,
        rewards={"format": [1.0, 1.0, 1.0, 0.0], "accuracy": [1.0, 0.0, 0.0, None]},
        totals=[2.0, 1.0, 1.0, 0.0],
        advantages=[1.3, -0.2, -0.2, -0.9],
        lengths=[20, 18, 9, 64],
        finish_reasons=["stop", "stop", "stop", "length"],
    )
    second = rollout_record(
        step=step,
        sample_id=f"boxes_{step}",
        images=[str(image_paths[1]), str(image_paths[0].parent / "gone.png")],
        prompt="Where is the blue box?",
        answer={"box": [300, 200, 600, 400]},
        texts=["<answer>[300, 200, 600, 400]</answer>", "<answer>left</answer>"],
        rewards={"format": [0.0, 0.0], "accuracy": [1.0, 0.0]},
        totals=[1.0, 0.0],
        advantages=[0.7, -0.7],
        lengths=[12, 4],
        finish_reasons=["stop", "stop"],
    )
    return [first, second]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """metrics.jsonl (30 steps), alarms.jsonl, rollouts.jsonl (steps 10, 20, 30), config.yaml."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(step_metrics(s)) + "\n" for s in range(1, STEPS + 1))
    )
    append_alarms(
        run / "alarms.jsonl",
        [
            Alarm(
                12,
                "format_without_accuracy",
                "format reward rose <fast> while accuracy went 0.10 -> 0.10",
                "warning",
            )
        ],
    )
    paths = images(tmp_path)
    for step in (10, 20, 30):
        write_rollouts(run / "rollouts.jsonl", groups(step, paths))
    (run / "config.yaml").write_text("model:\n  path: runs/tiny/<model>\n")
    return run
