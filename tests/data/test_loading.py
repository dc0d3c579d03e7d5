"""Every accepted layout and file kind loads into the same `Sample`s."""

import json

import datasets
import pytest
from PIL import Image

from vlrl.data import FORMATS, LoadReport, Sample, load_samples
from vlrl.data.loading import IMAGE_CACHE


def test_canonical_jsonl(tmp_path, png, jsonl):
    png("imgs/a.png")
    png("imgs/b.png", "blue")
    path = jsonl(
        [
            {
                "id": "q1",
                "images": ["imgs/a.png", "imgs/b.png"],
                "question": "<image> vs <image>: which is red?",
                "answer": "first",
                "choices": ["first", "second"],
                "solution": "The first is red.",
                "task": "mcq",
                "difficulty": 2,
                "meta": {"src": "synthetic"},
            },
            {"id": 2, "question": "What is 2+2?", "answer": 4},
        ]
    )
    samples, report = load_samples(path)
    first, second = samples
    assert first == Sample(
        id="q1",
        question="<image> vs <image>: which is red?",
        answer="first",
        images=[tmp_path / "imgs/a.png", tmp_path / "imgs/b.png"],
        choices=["first", "second"],
        solution="The first is red.",
        task="mcq",
        extra={"difficulty": 2, "meta": {"src": "synthetic"}},
    )
    assert first.images[0].is_absolute()
    assert (second.id, second.answer, second.images) == ("2", 4, [])
    assert report == LoadReport(str(path), n_read=2, n_loaded=2, skipped=[], format="canonical")
    assert report.summary() == "train.jsonl: 2/2 rows loaded"


def test_single_image_key_absolute_path_and_generated_id(tmp_path, png, jsonl):
    image = png("a.png")
    path = jsonl(["", {"image": str(image), "question": "q", "answer": [1, 2, 3, 4]}], name="rec.jsonl")
    (sample,), report = load_samples(path)
    assert sample.images == [image]
    assert sample.id == "rec-2"  # blank lines still count in line numbers
    assert sample.answer == [1, 2, 3, 4]
    assert report.n_read == 1


def test_json_list_and_json_lines_named_json(tmp_path, png):
    png("a.png")
    rows = [{"id": "x", "image": "a.png", "question": "q", "answer": "1"}, {"question": "r", "answer": "2"}]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(rows, indent=2))
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(map(json.dumps, rows)))
    for path in (listed, lines):
        samples, _ = load_samples(path)
        assert [s.id for s in samples] == ["x", f"{path.stem}-2"]


def _image_rows(png) -> dict:
    """Columns of a two-row dataset whose images are stored inside it."""
    red, blue = png("red.png").read_bytes(), png("blue.png", "blue").read_bytes()
    return {
        "id": ["r1", "r2"],
        "image": [{"bytes": red, "path": None}, {"bytes": blue, "path": None}],
        "problem": ["Color?", "Color?"],
        "solution": ["<answer>red</answer>", "<answer>blue</answer>"],
    }


def test_parquet_with_image_feature_writes_images_to_cache(tmp_path, png):
    ds = datasets.Dataset.from_dict(_image_rows(png)).cast_column("image", datasets.Image())
    path = tmp_path / "r1v.parquet"
    ds.to_parquet(str(path))
    samples, report = load_samples(path)
    assert report.format == "r1v"
    assert [s.answer for s in samples] == ["red", "blue"]
    assert samples[0].images == [tmp_path / IMAGE_CACHE / "r1_0.png"]
    assert samples[1].images[0].read_bytes() == (tmp_path / "blue.png").read_bytes()  # verbatim


def test_parquet_with_list_of_images_and_no_ids(tmp_path, png):
    red = {"bytes": png("red.png").read_bytes(), "path": None}
    ds = datasets.Dataset.from_dict(
        {"images": [[red, red]], "question": ["<image><image>same?"], "answer": ["yes"]}
    )
    path = tmp_path / "pairs.parquet"
    ds.cast_column("images", datasets.List(datasets.Image())).to_parquet(str(path))
    (sample,), _ = load_samples(path)
    assert sample.id == "pairs-1"
    assert sample.images == [
        tmp_path / IMAGE_CACHE / "pairs-1_0.png",
        tmp_path / IMAGE_CACHE / "pairs-1_1.png",
    ]


def test_parquet_with_plain_path_column(tmp_path, png):
    png("a.png")
    path = tmp_path / "plain.parquet"
    datasets.Dataset.from_dict({"image": ["a.png"], "question": ["q"], "answer": ["1"]}).to_parquet(str(path))
    (sample,), _ = load_samples(path)
    assert sample.images == [tmp_path / "a.png"]


def test_csv(tmp_path, png):
    png("a.png")
    path = tmp_path / "t.csv"
    path.write_text("id,image,question,answer\nc1,a.png,q,7\n")
    (sample,), _ = load_samples(path)
    assert (sample.id, sample.images, sample.answer) == ("c1", [tmp_path / "a.png"], 7)


def test_save_to_disk_folder(tmp_path, png):
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict(_image_rows(png)).cast_column("image", datasets.Image()).save_to_disk(
        str(folder)
    )
    samples, report = load_samples(folder)
    assert report.summary() == "saved: 2/2 rows loaded"
    assert samples[1].images == [tmp_path / IMAGE_CACHE / "r2_0.png"]


def test_save_to_disk_with_splits_asks_for_one(tmp_path, png):
    folder = tmp_path / "dd"
    ds = datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]})
    datasets.DatasetDict({"train": ds}).save_to_disk(str(folder))
    with pytest.raises(ValueError, match="splits"):
        load_samples(folder)
    assert load_samples(folder / "train")[1].n_loaded == 1


def test_maye(tmp_path, png, jsonl):
    png("g.png")
    path = jsonl([{"question": "Find x.", "answer": "5", "solution": "x = 10 / 2 = 5", "image": "g.png"}])
    (sample,), report = load_samples(path, format="maye")
    assert (sample.question, sample.answer, sample.solution) == ("Find x.", "5", "x = 10 / 2 = 5")
    assert report.format == "maye"


def test_vlm_r1_multi_image_and_box_answer(tmp_path, png, jsonl):
    png("a.jpg")
    png("b.jpg")
    path = jsonl(
        [
            {
                "id": 1,
                "image": ["a.jpg", "b.jpg"],
                "conversations": [
                    {"from": "human", "value": "<image>\n<image>\nWhich differs?"},
                    {"from": "gpt", "value": "second"},
                ],
            },
            {
                "id": 2,
                "image": "a.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>Box the cat."},
                    {"from": "gpt", "value": "[10, 20, 30, 40]"},
                ],
            },
        ]
    )
    (multi, rec), report = load_samples(path)
    assert report.format == "vlm_r1"
    assert multi.question == "<image>\n<image>\nWhich differs?" and len(multi.images) == 2
    assert rec.answer == [10, 20, 30, 40]
    assert rec.segments() == [0, "Box the cat."]


def test_r1v_answer_extraction(tmp_path, png, jsonl):
    png("c.png")
    path = jsonl([{"image": "c.png", "problem": "How many cubes?", "solution": "<answer> 3 </answer>"}])
    (sample,), report = load_samples(path)
    assert report.format == "r1v"
    assert (sample.question, sample.answer, sample.solution) == (
        "How many cubes?",
        "3",
        "<answer> 3 </answer>",
    )


def test_explicit_format_overrides_detection_and_unknown_format_lists_valid(jsonl):
    path = jsonl([{"question": "q", "answer": "a", "problem": "an extra field"}])
    (sample,), _ = load_samples(path, format="canonical")
    assert sample.extra == {"problem": "an extra field"}
    with pytest.raises(ValueError, match="valid: auto, " + ", ".join(FORMATS)):
        load_samples(path, format="llava")


def test_images_checked_once_per_path(tmp_path, png, jsonl, monkeypatch):
    png("a.png")
    path = jsonl([{"image": "a.png", "question": f"q{i}", "answer": "a"} for i in range(3)])
    opened = []
    real_open = Image.open

    def counting_open(fp, *args):
        opened.append(fp)
        return real_open(fp, *args)

    monkeypatch.setattr(Image, "open", counting_open)
    load_samples(path)
    assert opened == [tmp_path / "a.png"]  # three rows, one image, one open


def test_check_images_false_skips_the_disk(jsonl):
    (sample,), _ = load_samples(
        jsonl([{"image": "absent.png", "question": "q", "answer": "a"}]), check_images=False
    )
    assert sample.images[0].name == "absent.png"


def test_stored_image_of_an_id_unfit_for_a_file_name_is_named_by_line(tmp_path, png):
    rows = {**_image_rows(png), "id": ["a/b", "a_b"]}
    path = tmp_path / "ids.parquet"
    datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).to_parquet(str(path))
    first, second = load_samples(path)[0]
    assert (first.id, first.images[0].name) == ("a/b", "ids-1_0.png")
    assert second.images[0].name == "a_b_0.png"


def test_image_root_resolves_relative_paths(tmp_path, png, jsonl):
    # VLM-R1 / LLaVA layout: annotations in one folder, images under another
    png("coco/train2014/a.png")
    absolute = png("elsewhere/b.png")
    (tmp_path / "annotations").mkdir()
    path = jsonl(
        [{"question": "q", "answer": "a", "images": ["train2014/a.png", str(absolute)]}],
        name="annotations/rec.jsonl",
    )
    (sample,), _ = load_samples(path, image_root=tmp_path / "coco")
    assert sample.images == [tmp_path / "coco/train2014/a.png", absolute]
