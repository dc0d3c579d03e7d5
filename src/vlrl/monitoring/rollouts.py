"""Sampled rollouts on disk: `<run>/rollouts.jsonl`, one line per dumped prompt group.

A line holds what a person needs to judge the group by eye, and what `vlrl report` shows:

    {"step": 12, "sample_id": "count_0042", "images": ["/abs/img.png"], "prompt": "How many ...?",
     "answer": 3, "responses": [{"text": "...", "rewards": {"format": 1.0, "accuracy": null},
     "total": 1.0, "advantage": 0.71, "length": 87, "finish_reason": "stop"}, ...]}

Rewards are None where a reward did not apply; non-finite numbers are written as null because
JSON has neither NaN nor infinity.
"""

from __future__ import annotations

import math
from pathlib import Path

from vlrl.io import append_jsonl, read_jsonl


def _number(value) -> float | None:
    """A finite float, or None for None, NaN and infinities."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def rollout_record(
    step: int,
    sample_id: str,
    images: list[str],
    prompt: str,
    answer,
    texts: list[str],
    rewards: dict[str, list[float | None]],
    totals: list[float],
    advantages: list[float],
    lengths: list[int],
    finish_reasons: list[str],
) -> dict:
    """One group's line: per-completion lists (G each) zipped into one entry per response.

    `rewards` maps a reward name to its G scores; `images` are stored as absolute paths so that
    the report finds them from any working directory.
    """
    columns = [texts, totals, advantages, lengths, finish_reasons, *rewards.values()]
    if len({len(c) for c in columns}) > 1:
        raise ValueError(
            f"rollout_record: per-completion lists differ in length: {[len(c) for c in columns]}"
        )
    responses = [
        {
            "text": text,
            "rewards": {name: _number(scores[g]) for name, scores in rewards.items()},
            "total": _number(totals[g]),
            "advantage": _number(advantages[g]),
            "length": int(lengths[g]),
            "finish_reason": finish_reasons[g],
        }
        for g, text in enumerate(texts)
    ]
    return {
        "step": int(step),
        "sample_id": str(sample_id),
        "images": [str(Path(p).resolve()) for p in images],
        "prompt": prompt,
        "answer": answer,
        "responses": responses,
    }


def write_rollouts(path: str | Path, records: list[dict]) -> None:
    """Append `records` (from `rollout_record`) to a rollouts.jsonl file, flushed at once.

    Parts of an answer that JSON cannot hold (a set, a numpy number) are written as their strings.
    """
    if records:
        append_jsonl(path, records, default=str)


def read_rollouts(path: str | Path) -> list[dict]:
    """The records of a rollouts.jsonl file in file order; [] when the run dumped none."""
    path = Path(path)
    return read_jsonl(path) if path.is_file() else []
