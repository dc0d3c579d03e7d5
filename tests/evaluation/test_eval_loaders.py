"""Benchmark files in their distributed layouts (written here, with tiny PIL images) -> Samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlrl.data import DataError
from vlrl.data.prompts import get_template, user_text
from vlrl.evaluation.benchmarks import BENCHMARKS
from vlrl.evaluation.loaders import load_benchmark


@pytest.fixture
def folder(tmp_path) -> Path:
    """A benchmark folder with images/1.png .. images/4.png."""
    (tmp_path / "images").mkdir()
    for i, color in enumerate(["red", "green", "blue", "white"], 1):
        Image.new("RGB", (8, 8), color).save(tmp_path / "images" / f"{i}.png")
    return tmp_path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MATHVISTA = {
    "1": {
        "pid": "1",
        "question": "Which animal is shown?",
        "image": "images/1.png",
        "choices": ["cat", "dog"],
        "answer": "dog",
        "answer_type": "text",
        "precision": None,
        "question_type": "multi_choice",
        "unit": None,
        "metadata": {"category": "general-vqa", "task": "figure question answering", "skills": ["logical"]},
        "query": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, "
        "C, D, at the end.\nQuestion: Which animal is shown?\nChoices:\n(A) cat\n(B) dog",
    },
    "2": {
        "pid": "2",
        "question": "How long is the bar?",
        "image": "images/2.png",
        "choices": None,
        "answer": "1.5",
        "answer_type": "float",
        "precision": 1.0,
        "question_type": "free_form",
        "unit": "cm",
        "metadata": {"category": "math-targeted-vqa", "task": "geometry problem solving"},
        "query": "Hint: Please answer the question requiring a floating-point number with one decimal "
        "place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.\nQuestion: How long is the bar?",
    },
}


def test_mathvista_testmini_json_object(folder):
    path = folder / "testmini.json"
    path.write_text(json.dumps(MATHVISTA))
    mc, num = load_benchmark(path, "mathvista")
    assert (mc.id, mc.choices, mc.answer, mc.images) == (
        "1",
        ["cat", "dog"],
        "dog",
        [folder / "images/1.png"],
    )
    assert mc.question.startswith("Hint: Please answer") and mc.question.endswith("\nWhich animal is shown?")
    assert mc.extra["category"] == "general-vqa" and mc.task == "figure question answering"
    assert (num.extra["answer_type"], num.extra["precision"], num.extra["question_type"]) == (
        "float",
        1.0,
        "free_form",
    )
    # the passed-through fields are what scoring reads
    bench = BENCHMARKS["mathvista"]
    assert bench.score(bench.extract("<answer>1.50 cm</answer>", num), num) == 1.0
    assert bench.score(bench.extract("<answer>B</answer>", mc), mc) == 1.0


def test_mathvista_jsonl_reports_bad_rows_against_the_original_file(folder):
    second = dict(MATHVISTA["2"], image="images/missing.png")
    path = write_jsonl(folder / "testmini.jsonl", [MATHVISTA["1"], second])
    with pytest.raises(DataError, match=r"testmini\.jsonl:2 field 'images': image not found"):
        load_benchmark(path, "mathvista")
    path = write_jsonl(folder / "nopid.jsonl", [{k: v for k, v in MATHVISTA["1"].items() if k != "pid"}])
    with pytest.raises(DataError, match=r"nopid\.jsonl:1 field 'pid': a MathVista row needs 'pid'"):
        load_benchmark(path, "mathvista")


def mmmu_row(**changes) -> dict:
    row = {
        "id": "validation_Art_Theory_3",
        "question": "Compare <image 2> with <image 1>. Which is older?",
        "options": "['The first', \"The second's\"]",
        "explanation": "",
        "image_1": "images/1.png",
        "image_2": "images/2.png",
        "image_3": None,
        "img_type": "['Paintings']",
        "answer": "B",
        "topic_difficulty": "Easy",
        "question_type": "multiple-choice",
        "subfield": "Art History",
    }
    return row | changes


def test_mmmu_markers_follow_the_text_and_options_are_parsed(folder):
    path = write_jsonl(folder / "mmmu.jsonl", [mmmu_row()])
    (sample,) = load_benchmark(path, "mmmu")
    # <image 2> comes first in the text, so image_2 is the first image
    assert sample.question == "Compare <image> with <image>. Which is older?"
    assert sample.images == [folder / "images/2.png", folder / "images/1.png"]
    assert sample.choices == ["The first", "The second's"]  # a Python list literal, parsed
    assert (sample.extra["subject"], sample.extra["subfield"], sample.extra["question_type"]) == (
        "Art_Theory",
        "Art History",
        "multiple-choice",
    )
    bench = BENCHMARKS["mmmu"]
    assert bench.score(bench.extract("<answer>(B)</answer>", sample), sample) == 1.0


def test_mmmu_image_options_and_unmentioned_images(folder):
    row = mmmu_row(
        question="Which painting matches <image 1>?",
        options="['<image 2>', '<image 3>']",
        image_3="images/3.png",
        image_4="images/4.png",  # never mentioned: placed first, with a marker of its own
    )
    (sample,) = load_benchmark(write_jsonl(folder / "mmmu.jsonl", [row]), "mmmu")
    assert sample.question == "<image>Which painting matches <image>?\nOptions:\nA. <image>\nB. <image>"
    assert [p.name for p in sample.images] == ["4.png", "1.png", "2.png", "3.png"]
    assert sample.choices is None and sample.extra["options"] == ["<image 2>", "<image 3>"]  # for scoring
    assert [s for s in sample.segments() if isinstance(s, int)] == [0, 1, 2, 3]
    # the template lists no options a second time
    assert user_text(sample, get_template("think_answer")).count("Options:") == 1


def test_mmmu_open_question_and_errors(folder):
    open_row = mmmu_row(question="<image 1> What is x?", options="[]", answer="3.5", question_type="open")
    (sample,) = load_benchmark(write_jsonl(folder / "open.jsonl", [open_row]), "mmmu")
    assert sample.choices is None and sample.answer == "3.5"
    missing = mmmu_row(image_2=None)
    with pytest.raises(DataError, match=r"bad\.jsonl:1 field 'image_2': the question shows <image 2>"):
        load_benchmark(write_jsonl(folder / "bad.jsonl", [missing]), "mmmu")
    code = mmmu_row(options="__import__('os').system('echo pwned')")
    with pytest.raises(DataError, match=r"evil\.jsonl:1 field 'options': expected a list"):
        load_benchmark(write_jsonl(folder / "evil.jsonl", [code]), "mmmu")


def test_mathverse_layout(folder):
    rows = [
        {
            "sample_index": "1",
            "problem_index": "1",
            "problem_version": "Text Dominant",
            "question": "Find the angle.\nChoices:\nA:30°\nB:60°",
            "image": "images/1.png",
            "answer": "B",
            "question_type": "multi-choice",
            "metadata": {
                "split": "testmini",
                "source": "GeoQA",
                "subject": "Plane Geometry",
                "subfield": "Angle",
            },
            "query_wo": "...",
            "query_cot": "...",
        },
        {
            "sample_index": "2",
            "problem_index": "1",
            "problem_version": "Vision Only",
            "question": "",
            "image": "images/2.png",
            "answer": "\\frac{1}{2}",
            "question_type": "free-form",
            "metadata": {"subject": "Plane Geometry", "subfield": "Length"},
        },
    ]
    mc, vision_only = load_benchmark(write_jsonl(folder / "mathverse.jsonl", rows), "mathverse")
    assert (mc.id, mc.images, mc.extra["subject"], mc.extra["problem_version"]) == (
        "1",
        [folder / "images/1.png"],
        "Plane Geometry",
        "Text Dominant",
    )
    assert vision_only.question == "" and vision_only.extra["subfield"] == "Length"
    bench = BENCHMARKS["mathverse"]
    assert bench.score(bench.extract("<answer>60°</answer>", mc), mc) == 1.0
    assert bench.score(bench.extract("<answer>0.5</answer>", vision_only), vision_only) == 1.0


def test_vlrl_layout_and_unknown_layout(folder):
    path = write_jsonl(
        folder / "own.jsonl", [{"id": "a", "image": "images/1.png", "question": "2+1?", "answer": "3"}]
    )
    (sample,) = load_benchmark(path, "vlrl")
    assert sample.answer == "3"
    with pytest.raises(ValueError, match="unknown benchmark layout 'mathvision'"):
        load_benchmark(path, "mathvision")
