"""Each task's answer, reasoning and pixels agree with its stored scene.

Answers are recomputed here from the scene independently of the task code (parsing the question),
and boxes are checked against the rendered PNGs.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlrl.data.sample import Sample
from vlrl.synth import TASKS, generate_dataset
from vlrl.synth.render import BACKGROUND, DRAW, RGB, render
from vlrl.synth.scene import COLOURS, SHAPES

SOLUTION_RE = re.compile(r"<think>(?P<think>.+?)</think><answer>(?P<answer>.*?)</answer>", re.S)


N, SEED, HELDOUT = 40, 3, 0.25


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, tuple[Path, list[dict]]]:
    """task -> (data folder, train + held-out rows), every task generated once."""
    out = {}
    for task in TASKS:
        folder = tmp_path_factory.mktemp(task)
        paths = generate_dataset(task, N, folder, seed=SEED, heldout=HELDOUT)
        out[task] = (folder, read_rows(paths["train"]) + read_rows(paths["heldout"]))
    return out


def scenes_of(row: dict) -> list[list[dict]]:
    """One scene per image, whatever the task."""
    return row["scene"] if len(row["images"]) > 1 else [row["scene"]]


def name(obj: dict) -> str:
    return f"{obj['colour']} {obj['shape']}"


def centre(box: list[int], axis: int) -> float:
    return (box[axis] + box[axis + 2]) / 2


def rows_of(generated, task):
    return generated[task][1]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_split_sizes_and_disjoint(task, generated):
    folder, rows = generated[task]
    train, heldout = read_rows(folder / "train.jsonl"), read_rows(folder / "heldout.jsonl")
    assert (len(train), len(heldout)) == (N - round(N * HELDOUT), round(N * HELDOUT))
    assert not {r["id"] for r in train} & {r["id"] for r in heldout}
    scenes = [json.dumps(r["scene"]) for r in rows]
    assert len(set(scenes)) == len(rows)  # no image is shared between train and held-out


@pytest.mark.parametrize("task", sorted(TASKS))
def test_rows_fit_the_canonical_sample(task, generated):
    folder, rows = generated[task]
    core = {"id", "question", "answer", "images", "choices", "solution", "task"}
    for row in rows:
        assert all((folder / p).is_file() for p in row["images"])
        sample = Sample(
            **{k: v for k, v in row.items() if k in core and k != "images"},
            images=[folder / p for p in row["images"]],
            extra={k: v for k, v in row.items() if k not in core},
        )
        image_slots = [s for s in sample.segments() if isinstance(s, int)]
        assert image_slots == list(range(len(row["images"])))
        assert row["task"] == task


def test_counting(generated):
    questions = set()
    for row in rows_of(generated, "counting"):
        (target,) = re.fullmatch(r"How many (.+) are in the image\?", row["question"]).groups()
        questions.add(target)
        words = target.split()
        match = {
            1: lambda o, w=words: w[0] == "shapes" or o["shape"] + "s" == w[0],
            2: lambda o, w=words: o["colour"] == w[0],
        }[len(words)]
        assert row["answer"] == str(sum(match(o) for o in row["scene"]))
        assert 1 <= len(row["scene"]) <= 6
    assert "shapes" in questions and len(questions) > 3  # all three variants occur


def test_count_shapes(generated):
    rows = rows_of(generated, "count_shapes")
    for row in rows:
        assert row["question"] == "How many shapes are in the image?"
        assert row["answer"] == str(len(row["scene"])) and 1 <= len(row["scene"]) <= 6
        assert row["solution"] == f"<think>{row['caption']}</think><answer>{row['answer']}</answer>"
        assert row["caption"].startswith(
            f"There {'is 1 shape' if row['answer'] == '1' else 'are ' + row['answer'] + ' shapes'}:"
        )
    assert {r["answer"] for r in rows} == {str(n) for n in range(1, 7)}


def test_colour_mcq(generated):
    for row in rows_of(generated, "colour_mcq"):
        counts = Counter(o["colour"] for o in row["scene"]).most_common()
        top = counts[0][0]
        assert len(counts) == 1 or counts[0][1] > counts[1][1]  # a unique most frequent colour
        assert len(row["choices"]) == 4 == len(set(row["choices"])) and set(row["choices"]) <= set(COLOURS)
        assert row["answer"] in "ABCD" and row["choices"]["ABCD".index(row["answer"])] == top
        assert row["answer_text"] == top


def test_digit_sum(generated):
    for row in rows_of(generated, "digit_sum"):
        digits = [int(o["text"]) for o in row["scene"]]
        assert len(digits) == 2 and row["answer"] == str(sum(digits))
        assert f"{digits[0]} + {digits[1]} = {sum(digits)}." in row["solution"]


def test_spatial_is_correct_and_balanced(generated):
    axes = {"to the left of": (0, 1), "to the right of": (0, -1), "above": (1, 1), "below": (1, -1)}
    answers = Counter()
    for row in rows_of(generated, "spatial"):
        a, rel, b = re.fullmatch(r"Is the (\w+ \w+) (.+) the (\w+ \w+)\?", row["question"]).groups()
        by_name = {name(o): o for o in row["scene"]}
        assert len(row["scene"]) == 2 and set(by_name) == {a, b}
        axis, sign = axes[rel]
        holds = sign * (centre(by_name[b]["box"], axis) - centre(by_name[a]["box"], axis)) > 0
        assert row["answer"] == ("yes" if holds else "no")
        answers[row["answer"]] += 1
    assert answers["yes"] >= 10 and answers["no"] >= 10


def test_compare_two(generated):
    for row in rows_of(generated, "compare_two"):
        (shape,) = re.search(r"Which image has more (\w+)s\?", row["question"]).groups()
        assert len(row["images"]) == 2 and row["question"].count("<image>") == 2
        counts = [sum(o["shape"] == shape for o in scene) for scene in row["scene"]]
        assert counts[0] != counts[1]  # never tied
        assert row["answer"] == str(1 + counts.index(max(counts)))


def test_grounding(generated):
    negatives = 0
    for row in rows_of(generated, "grounding"):
        (target,) = re.fullmatch(r"Give the bounding box of the (\w+ \w+)\.", row["question"]).groups()
        names = [name(o) for o in row["scene"]]
        assert len(set(names)) == len(names)  # every shape is described uniquely
        expected = [o["box"] for o in row["scene"] if name(o) == target]
        assert row["answer"] == row["boxes"] == expected
        assert all(isinstance(v, int) for box in expected for v in box)
        negatives += not expected
    assert 2 <= negatives <= 20  # ~20% of 40


@pytest.mark.parametrize("task", sorted(TASKS))
def test_solution_form(task, generated):
    for row in rows_of(generated, task):
        match = SOLUTION_RE.fullmatch(row["solution"])
        assert match, row["solution"]
        assert match["think"].startswith(row["caption"])
        written = match["answer"] if isinstance(row["answer"], str) else json.loads(match["answer"])
        assert written == row["answer"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_caption_lists_every_object(task, generated):
    for row in rows_of(generated, task):
        for scene in scenes_of(row):
            for obj in scene:
                assert (f"digit {obj['text']}" if obj["shape"] == "digit" else name(obj)) in row["caption"]


def ink_bbox(pixels: np.ndarray) -> list[int] | None:
    """[x1, y1, x2, y2) of the non-background pixels, None when there are none."""
    ys, xs = np.nonzero((pixels != BACKGROUND).any(axis=-1))
    return None if xs.size == 0 else [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def close(a: list[int] | None, b: list[int], tol: int = 1) -> bool:
    return a is not None and all(abs(u - v) <= tol for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("shape", sorted(DRAW))
@pytest.mark.parametrize("box", [[5, 7, 23, 25], [40, 30, 76, 66], [10, 60, 37, 100]])
def test_single_shape_fills_its_box(shape, box):
    obj = {"shape": shape, "colour": "black" if shape == "digit" else "red", "box": box, "text": "4"}
    pixels = np.asarray(render([obj], 112))
    assert close(ink_bbox(pixels), box)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_boxes_match_rendered_pixels(task, generated):
    folder, rows = generated[task]
    for row in rows:
        for scene, path in zip(scenes_of(row), row["images"], strict=True):
            pixels = np.asarray(Image.open(folder / path).convert("RGB"))
            assert pixels.shape == (112, 112, 3)
            outside = pixels.copy()
            for obj in scene:
                x1, y1, x2, y2 = obj["box"]
                crop = pixels[y1:y2, x1:x2]
                assert (crop == RGB[obj["colour"]]).all(axis=-1).any()
                assert close(ink_bbox(crop), [0, 0, x2 - x1, y2 - y1])
                outside[y1:y2, x1:x2] = BACKGROUND
            assert ink_bbox(outside) is None  # nothing is drawn outside the boxes


def test_vocabulary_has_a_colour_for_everything():
    assert set(COLOURS) | {"black"} == set(RGB) and set(SHAPES) < set(DRAW)
