"""Files written by `generate_dataset`: determinism, held-out sizes, argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlrl.synth import TASKS, generate_dataset


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_same_seed_gives_identical_bytes(task, tmp_path):
    generate_dataset(task, 6, tmp_path / "a", seed=11, heldout=2)
    generate_dataset(task, 6, tmp_path / "b", seed=11, heldout=2)
    a, b = folder_bytes(tmp_path / "a"), folder_bytes(tmp_path / "b")
    # jsonl files and every png
    assert sorted(a) == sorted(b) and len(a) >= 2 + 6
    assert a == b


@pytest.mark.parametrize("task", sorted(TASKS))
def test_different_seeds_differ(task, tmp_path):
    generate_dataset(task, 6, tmp_path / "a", seed=1)
    generate_dataset(task, 6, tmp_path / "b", seed=2)
    a, b = folder_bytes(tmp_path / "a"), folder_bytes(tmp_path / "b")
    assert a["train.jsonl"] != b["train.jsonl"]
    assert all(a[name] != b[name] for name in a if name.endswith(".png"))


def test_jsonl_format(tmp_path):
    paths = generate_dataset("counting", 5, tmp_path, seed=0, heldout=1)
    raw = paths["train"].read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n") and raw.count(b"\n") == 4
    assert list(json.loads(raw.splitlines()[0])) == [
        "id", "task", "images", "question", "answer", "solution", "caption", "scene",
    ]  # fmt: skip


@pytest.mark.parametrize(("heldout", "expected"), [(0, 0), (3, 3), (10, 10), (0.2, 2), (0.0, 0), (1.0, 10)])
def test_heldout_count_or_fraction(heldout, expected, tmp_path):
    paths = generate_dataset("spatial", 10, tmp_path, seed=0, heldout=heldout)
    assert len(read_rows(paths["heldout"])) == expected
    assert len(read_rows(paths["train"])) == 10 - expected


@pytest.mark.parametrize("heldout", [11, -1, 1.5, -0.1])
def test_bad_heldout_fails(heldout, tmp_path):
    with pytest.raises(ValueError, match="heldout"):
        generate_dataset("spatial", 10, tmp_path, seed=0, heldout=heldout)


def test_unknown_task_names_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown synth task 'count'") as err:
        generate_dataset("count", 4, tmp_path, seed=0)
    assert all(name in str(err.value) for name in TASKS)
    assert not any(tmp_path.iterdir())  # failed before writing anything
