"""ScienceQA in both public forms (the original problems.json and the Hugging Face parquet) loads
into the same multiple-choice samples; text-only rows are left out and counted; bad rows name the
file, row and field.

Rows are ScienceQA's own examples: the README's "data examples in problem.json" (lupantech/ScienceQA
at 2cbf8318) and row 5 of the test split printed by its demos/Hugging_Face_Dataset_demo.ipynb.
"""

from __future__ import annotations

import json
import typing

import datasets
import pytest

from vlrl.cli import main
from vlrl.config.sections import DataSection
from vlrl.data import FORMATS, DataError, load_samples
from vlrl.data.loading import IMAGE_CACHE
from vlrl.data.prompts import TEMPLATES, user_text
from vlrl.rewards.accuracy import accuracy_reward

NORTH = {  # the README's example (lecture and solution shortened)
    "question": "Which of these states is farthest north?",
    "choices": ["West Virginia", "Louisiana", "Arizona", "Oklahoma"],
    "answer": 0,
    "hint": "Figure: sturgeon.",
    "image": "image.png",
    "task": "closed choice",
    "grade": "grade2",
    "subject": "social science",
    "topic": "geography",
    "category": "Geography",
    "skill": "Read a map: cardinal directions",
    "lecture": "Maps have four cardinal directions, or main directions.",
    "solution": "To find the answer, look at the compass rose. West Virginia is farthest north.",
    "split": "train",
}
TEXT_ONLY = NORTH | {"question": "Which word is a noun?", "choices": ["run", "cat"], "answer": 1}
TEXT_ONLY |= {"hint": "", "image": None}
FOOD_WEB = {  # the Hugging Face demo's row (hint and texts shortened)
    "question": "Which of these organisms contains matter that was once part of the lichen?",
    "choices": ["bilberry", "mushroom"],
    "answer": 1,
    "hint": "Below is a food web from a tundra ecosystem in Nunavut, a territory in Northern Canada.",
    "task": "closed choice",
    "grade": "grade5",
    "subject": "natural science",
    "topic": "biology",
    "category": "Ecosystems",
    "skill": "Interpret food webs II",
    "lecture": "A food web is a model.",
    "solution": "Use the arrows to follow how matter moves through this food web.",
}


def problems_json(tmp_path, rows: dict) -> typing.Any:
    path = tmp_path / "problems.json"
    path.write_text(json.dumps(rows, indent=4))  # pretty-printed, as the release is
    return path


def test_original_release_keyed_by_pid_with_images_under_split_and_pid(tmp_path, png):
    png("images/train/5/image.png")
    path = problems_json(tmp_path, {"5": NORTH, "6": TEXT_ONLY})
    (sample,), report = load_samples(path, format="scienceqa")
    assert sample.id == "5"
    assert sample.images == [tmp_path / "images/train/5/image.png"]
    assert sample.question == "Question: Which of these states is farthest north?\nContext: Figure: sturgeon."
    assert (sample.answer, sample.choices) == ("A", NORTH["choices"])
    assert sample.solution == NORTH["solution"] and sample.task == "closed choice"
    assert sample.extra["lecture"] == NORTH["lecture"] and sample.extra["split"] == "train"
    assert sample.extra["grade"] == "grade2" and "hint" not in sample.extra
    # the text-only question is no error: it is counted apart from bad rows
    assert (report.n_read, report.n_loaded, report.skipped, report.left_out) == (2, 1, [], {"text-only": 1})
    assert report.summary() == "problems.json: 1/2 rows loaded, 1 left out by format scienceqa (1 text-only)"


def test_detected_by_its_lecture_field(tmp_path, png):
    png("images/train/5/image.png")
    _, report = load_samples(problems_json(tmp_path, {"5": NORTH}))
    assert report.format == "scienceqa"


def test_hugging_face_parquet_with_the_picture_stored_in_the_row(tmp_path, png):
    picture = {"bytes": png("web.png").read_bytes(), "path": None}
    rows = [FOOD_WEB | {"image": picture}, TEXT_ONLY | {"image": None}]
    columns = {key: [row.get(key) for row in rows] for key in [*FOOD_WEB, "image"]}
    path = tmp_path / "test.parquet"
    datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image()).to_parquet(str(path))
    (sample,), report = load_samples(path)
    assert report.format == "scienceqa" and report.left_out == {"text-only": 1}
    assert sample.id == "test-1"
    assert sample.images == [tmp_path / IMAGE_CACHE / "test-1_0.png"]
    assert sample.images[0].read_bytes() == (tmp_path / "web.png").read_bytes()
    assert sample.question == f"Question: {FOOD_WEB['question']}\nContext: {FOOD_WEB['hint']}"
    assert (sample.answer, sample.choices) == ("B", ["bilberry", "mushroom"])


def test_an_empty_hint_is_context_n_a_as_scienceqas_prompt_builder_writes_it(png, tmp_path):
    png("images/val/9/image.png")
    (sample,), _ = load_samples(problems_json(tmp_path, {"9": NORTH | {"hint": "", "split": "val"}}))
    assert sample.question.endswith("\nContext: N/A")
    assert sample.images == [tmp_path / "images/val/9/image.png"]


def test_the_prompt_and_the_accuracy_reward_read_the_letter_against_the_choices(tmp_path, png):
    png("images/train/5/image.png")
    (sample,), _ = load_samples(problems_json(tmp_path, {"5": NORTH}))
    assert user_text(sample, TEMPLATES["caption_think_answer"]) == (
        "Question: Which of these states is farthest north?\nContext: Figure: sturgeon.\n"
        "Options:\nA. West Virginia\nB. Louisiana\nC. Arizona\nD. Oklahoma"
    )
    completions = [f"<answer>{a}</answer>" for a in ("A", "West Virginia", "B", "Arizona")]
    scores = accuracy_reward(completions, answer=[sample.answer] * 4, choices=[sample.choices] * 4)
    assert scores == [1.0, 1.0, 0.0, 0.0]


def test_a_hugging_face_row_exported_to_json_with_a_referenced_file(tmp_path, png):
    png("pics/web.png")
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(FOOD_WEB | {"image": {"bytes": None, "path": "pics/web.png"}}) + "\n")
    (sample,), _ = load_samples(path, format="scienceqa")
    assert sample.images == [tmp_path / "pics/web.png"]


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        (NORTH | {"answer": 4}, "answer", "0..3; got 4 (pid 7)"),
        (NORTH | {"answer": True}, "answer", "got True"),
        ({k: v for k, v in NORTH.items() if k != "choices"}, "choices", "needs a list of choices, got None"),
        (NORTH | {"choices": []}, "choices", "got []"),
        (NORTH | {"split": "test"}, "images", "image not found: "),  # images/test/7/ does not exist
        (NORTH | {"image": {"bytes": "iVBORw0KGgo=", "path": None}}, "image", "not from JSON"),
    ],
)
def test_a_bad_row_names_the_file_row_and_field(tmp_path, png, row, field, words):
    png("images/train/7/image.png")
    path = problems_json(tmp_path, {"5": TEXT_ONLY, "7": row})
    with pytest.raises(DataError) as err:
        load_samples(path, format="scienceqa")
    assert str(err.value).startswith(f"{path}:2 field '{field}': ")
    assert words in str(err.value)


def test_a_missing_image_names_the_path_the_split_and_pid_make(tmp_path):
    path = problems_json(tmp_path, {"7": NORTH})
    with pytest.raises(DataError, match=r"image not found: .*images/train/7/image\.png"):
        load_samples(path, format="scienceqa")


def test_split_files_written_from_the_release_keep_their_image_paths(tmp_path, png):
    """The README's recipe: one object per split next to problems.json, by each row's `split`."""
    png("images/train/5/image.png")
    png("images/val/8/image.png")
    problems = {"5": NORTH, "6": TEXT_ONLY, "8": NORTH | {"split": "val"}}
    for split in ("train", "val"):
        (tmp_path / f"{split}.json").write_text(
            json.dumps({pid: row for pid, row in problems.items() if row["split"] == split})
        )
    train, _ = load_samples(tmp_path / "train.json")
    val, _ = load_samples(tmp_path / "val.json")
    assert [s.id for s in train] == ["5"] and [s.id for s in val] == ["8"]
    assert val[0].images == [tmp_path / "images/val/8/image.png"]


def test_vlrl_data_reports_the_left_out_rows(tmp_path, png, capsys):
    png("images/train/5/image.png")
    assert main(["data", str(problems_json(tmp_path, {"5": NORTH, "6": TEXT_ONLY}))]) == 0
    out = capsys.readouterr().out
    assert "1/2 rows loaded, 1 left out by format scienceqa (1 text-only)" in out
    assert "tasks: closed choice 1" in out


def test_the_config_accepts_every_format():
    literal = typing.get_args(DataSection.model_fields["format"].annotation)
    assert set(literal) == {"auto", *FORMATS}


def test_a_json_object_of_non_rows_is_still_read_as_json_lines(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"question": "q", "answer": "1", "meta": {"a": 1}}))
    (sample,), _ = load_samples(path)
    assert (sample.id, sample.extra) == ("one-1", {"meta": {"a": 1}})
