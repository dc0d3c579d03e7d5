"""The detection and referring tasks: answers recomputed from the scene, independently of the task code."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from vlrl.synth import TASKS, generate_dataset
from vlrl.synth.scene import COLOURS, SHAPES

N, SEED = 40, 7
ROWS, COLS = ("top", None, "bottom"), ("left", None, "right")
ANSWER_RE = re.compile(r"<answer>(.*)</answer>$", re.S)


def read_rows(folder: Path) -> list[dict]:
    lines = [
        *(folder / "train.jsonl").read_text().splitlines(),
        *(folder / "heldout.jsonl").read_text().splitlines(),
    ]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, list[dict]]:
    out = {}
    for task in ("detection", "referring"):
        folder = tmp_path_factory.mktemp(task)
        generate_dataset(task, N, folder, seed=SEED)
        out[task] = read_rows(folder)
    return out


def where(box: list[int], size: int = 112) -> str:
    """Position words of a box centre in a 3x3 grid: "top left", "top", "centre", ..."""
    row = min(2, int(3 * (box[1] + box[3]) / 2 / size))
    col = min(2, int(3 * (box[0] + box[2]) / 2 / size))
    return " ".join(w for w in (ROWS[row], COLS[col]) if w) or "centre"


def test_tasks_are_registered_and_counting_remains():
    assert {"detection", "referring", "grounding", "counting"} <= set(TASKS)


def test_detection_lists_every_shape_with_label_and_box(rows):
    sizes = Counter()
    for row in rows["detection"]:
        assert row["question"] == "Detect all shapes and give their labels and boxes as JSON."
        expected = [{"bbox": o["box"], "label": f"{o['colour']} {o['shape']}"} for o in row["scene"]]
        assert row["answer"] == expected
        assert json.loads(ANSWER_RE.search(row["solution"])[1]) == expected  # JSON inside <answer>
        for obj in expected:  # the reasoning names each object with its place and box
            assert f"The {obj['label']} at the {where(obj['bbox'])} has box {obj['bbox']}." in row["solution"]
        sizes[len(expected)] += 1
    assert set(sizes) == {1, 2, 3, 4, 5}


def parse_description(text: str) -> dict[str, str]:
    """'red circle at the top left' -> {"colour": "red", "shape": "circle", "position": "top left"}."""
    noun, _, place = text.partition(" at the ")
    words = noun.split()
    out = {"position": place} if place else {}
    if words[0] in COLOURS:
        out["colour"] = words.pop(0)
    assert words in (["shape"], *[[s] for s in SHAPES]), text
    return out | ({"shape": words[0]} if words[0] != "shape" else {})


def test_referring_boxes_are_exactly_the_described_shapes(rows):
    negatives, forms = 0, Counter()
    for row in rows["referring"]:
        (text,) = re.fullmatch(r"Give the bounding box of the (.+)\.", row["question"]).groups()
        wanted = parse_description(text)
        seen = [
            {"colour": o["colour"], "shape": o["shape"], "position": where(o["box"])} for o in row["scene"]
        ]
        hits = [
            o["box"]
            for o, s in zip(row["scene"], seen, strict=True)
            if all(s[k] == v for k, v in wanted.items())
        ]
        assert len(hits) <= 1  # a description never fits two shapes
        assert row["answer"] == row["boxes"] == hits
        assert json.loads(ANSWER_RE.search(row["solution"])[1]) == hits
        assert 2 <= len(row["scene"]) <= 4
        negatives += not hits
        forms[tuple(sorted(wanted))] += 1
    assert 2 <= negatives <= 20  # ~20% of 40
    assert ("position", "shape") in forms and ("colour",) in forms and ("shape",) in forms


def test_referring_uses_position_to_tell_alike_shapes_apart(rows):
    # Some positive descriptions name a position where the shape alone would fit several.
    needed = 0
    for row in rows["referring"]:
        wanted = parse_description(re.fullmatch(r"Give the bounding box of the (.+)\.", row["question"])[1])
        if row["answer"] and "position" in wanted:
            alike = [o for o in row["scene"] if all(o[k] == v for k, v in wanted.items() if k != "position")]
            needed += len(alike) > 1
    assert needed >= 1


@pytest.mark.parametrize("task", ["detection", "referring"])
def test_deterministic_at_another_image_size(task, tmp_path):
    for name in ("a", "b"):
        generate_dataset(task, 5, tmp_path / name, seed=1, heldout=1, image_size=224)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 + 5
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    boxes = [o["box"] for row in read_rows(tmp_path / "a") for o in row["scene"]]
    assert max(v for box in boxes for v in box) > 112  # the layout scales with the image
