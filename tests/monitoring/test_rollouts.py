"""rollouts.jsonl: records built from per-completion lists, written and read back."""

import json
import math

import pytest

from vlrl.monitoring.rollouts import read_rollouts, rollout_record, write_rollouts


def record(step=1, **kw):
    args = {
        "step": step,
        "sample_id": "count_7",
        "images": ["img/a.png"],
        "prompt": "How many cats?",
        "answer": 3,
        "texts": ["<answer>3</answer>", "<answer>4</answer>"],
        "rewards": {"format": [1.0, 1.0], "accuracy": [1.0, None]},
        "totals": [2.0, math.nan],
        "advantages": [0.7071, -0.7071],
        "lengths": [5, 5],
        "finish_reasons": ["stop", "length"],
    }
    return rollout_record(**(args | kw))


def test_record_zips_completions_and_makes_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = record()
    assert r["images"] == [str(tmp_path / "img" / "a.png")]
    assert r["responses"][1] == {
        "text": "<answer>4</answer>",
        "rewards": {"format": 1.0, "accuracy": None},
        "total": None,  # NaN: JSON has none
        "advantage": -0.7071,
        "length": 5,
        "finish_reason": "length",
    }


def test_mismatched_lists_are_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        record(totals=[1.0])


def test_write_appends_and_read_returns_file_order(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    assert read_rollouts(path) == []
    write_rollouts(path, [record(1), record(1, sample_id="b")])
    write_rollouts(path, [record(2, answer={"boxes": (1, 2), "kind": complex(1, 2)})])
    back = read_rollouts(path)
    assert [(r["step"], r["sample_id"]) for r in back] == [(1, "count_7"), (1, "b"), (2, "count_7")]
    assert back[2]["answer"] == {"boxes": [1, 2], "kind": "(1+2j)"}  # not JSON: its string
    assert "NaN" not in path.read_text()
    with path.open("a") as f:  # a killed run's partial line
        f.write(json.dumps(record(3))[:40])
    assert len(read_rollouts(path)) == 3
