"""Each bad row raises a DataError naming file, line and field; skip_invalid accounts for every row."""

import pytest

from vlrl.data import DataError, RowError, load_samples

GOOD = {"question": "q", "answer": "a"}


def _error(path, line: int, field: str | None, kind: str, **kwargs) -> RowError:
    """The RowError `load_samples(path)` raises, checked to name file, line and field."""
    with pytest.raises(RowError) as caught:
        load_samples(path, **kwargs)
    err, message = caught.value, str(caught.value)
    assert path.name in message and f":{line}" in message, message
    assert field is None or f"field '{field}'" in message, message
    assert (err.line, err.field_name, err.kind) == (line, field, kind)
    return err


def test_invalid_json(jsonl):
    err = _error(jsonl([GOOD, '{"question": "q", "answer": '], name="bad.jsonl"), 2, None, "invalid json")
    assert "invalid JSON" in str(err)


def test_invalid_json_list_names_its_line(tmp_path):
    path = tmp_path / "list.json"
    path.write_text('[\n{"question": "q", "answer": "a"},\n{"question": }\n]')
    with pytest.raises(DataError, match=r"list\.json:3"):
        load_samples(path)


def test_missing_answer(jsonl):
    err = _error(jsonl([GOOD, {"question": "q"}]), 2, "answer", "no answer")
    assert "no answer" in str(err)
    _error(jsonl([{"question": "q", "answer": "  "}]), 1, "answer", "no answer")


def test_missing_question(jsonl):
    _error(jsonl([{"answer": "a"}]), 1, "question", "no question")


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"question": 3, "answer": "a"}, "question"),
        ({"question": "q", "answer": {"x": 1}}, "answer"),
        ({"question": "q", "answer": True}, "answer"),
        ({"question": "q", "answer": "a", "images": [1]}, "images"),
        ({"question": "q", "answer": "a", "choices": "A,B"}, "choices"),
        ({"question": "q", "answer": "a", "solution": ["step"]}, "solution"),
        ({"question": "q", "answer": "a", "id": [1]}, "id"),
    ],
)
def test_wrong_type(jsonl, row, field):
    err = _error(jsonl([row]), 1, field, "wrong type")
    assert "unknown field type" in str(err)


def test_extra_field_with_non_json_type(tmp_path):
    import datasets

    path = tmp_path / "t.parquet"
    datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"], "blob": [b"\x00"]}).to_parquet(str(path))
    _error(path, 1, "blob", "wrong type")


def test_row_that_is_not_an_object(jsonl):
    _error(jsonl(['["q", "a"]']), 1, None, "wrong type")


def test_missing_image(jsonl):
    err = _error(jsonl([{**GOOD, "image": "nowhere.png"}]), 1, "images", "missing image")
    assert "nowhere.png" in str(err)


def test_corrupted_image(tmp_path, png, jsonl):
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    _error(jsonl([{**GOOD, "image": "garbage.png"}]), 1, "images", "unreadable image")
    data = png("cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) - 20])  # truncated inside its last chunks
    _error(jsonl([{**GOOD, "image": "cut.png"}]), 1, "images", "unreadable image")


def test_corrupted_image_stored_in_parquet(tmp_path):
    import datasets

    path = tmp_path / "t.parquet"
    rows = {"question": ["q"], "answer": ["a"], "image": [{"bytes": b"junk", "path": None}]}
    datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).to_parquet(str(path))
    _error(path, 1, "images", "unreadable image")


def test_marker_count_mismatch(png, jsonl):
    png("a.png")
    err = _error(
        jsonl([{"question": "<image><image> q", "answer": "a", "image": "a.png"}]),
        1,
        "question",
        "marker mismatch",
    )
    assert "2 <image> markers" in str(err) and "1 images" in str(err)


def test_duplicate_id(jsonl):
    err = _error(jsonl([{**GOOD, "id": "x"}, GOOD, {**GOOD, "id": "x"}]), 3, "id", "duplicate id")
    assert "first used at line 1" in str(err)


def test_prompt_too_long(jsonl):
    path = jsonl([GOOD, {"question": "word " * 100, "answer": "a"}])
    err = _error(
        path,
        2,
        "question",
        "prompt too long",
        max_prompt_length=50,
        prompt_length=lambda s: len(s.question.split()) + 10 * len(s.images),
    )
    assert "100 tokens" in str(err) and "limit of 50" in str(err)
    assert "data.max_prompt_length" in str(err)


def test_skip_invalid_counts_and_reports(png, jsonl):
    png("a.png")
    path = jsonl(
        [
            {**GOOD, "id": "ok1", "image": "a.png"},
            {**GOOD, "id": "gone", "image": "gone.png"},
            {"question": "q", "id": "na"},
            "{broken",
            {**GOOD, "id": "ok1"},
            {**GOOD, "id": "ok2"},
            {**GOOD, "id": "ok3", "image": "gone.png"},
        ]
    )
    samples, report = load_samples(path, skip_invalid=True)
    assert [s.id for s in samples] == ["ok1", "ok2"]
    assert (report.n_read, report.n_loaded) == (7, 2)
    assert [(e.line, e.kind) for e in report.skipped] == [
        (2, "missing image"),
        (3, "no answer"),
        (4, "invalid json"),
        (5, "duplicate id"),
        (7, "missing image"),
    ]
    assert report.summary() == (
        "train.jsonl: 2/7 rows loaded, 5 skipped (2 missing image, 1 no answer, 1 invalid json, 1 duplicate id)"
    )


def test_all_invalid_raises_even_when_skipping(jsonl):
    path = jsonl([{"question": "q"}, "{broken"])
    with pytest.raises(DataError, match=r"no usable rows.*0/2 rows loaded.*train\.jsonl:1 field 'answer'"):
        load_samples(path, skip_invalid=True)


def test_empty_file_raises(jsonl):
    with pytest.raises(DataError, match="no usable rows"):
        load_samples(jsonl([]))


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_samples(tmp_path / "absent.jsonl")
    (tmp_path / "data.txt").write_text("hi")
    with pytest.raises(DataError, match=r"cannot read '\.txt'"):
        load_samples(tmp_path / "data.txt")


def test_image_over_the_pixel_limit(png, jsonl):
    png("a.png")  # 4x4 = 16 pixels
    path = jsonl([{**GOOD, "image": "a.png"}])
    err = _error(path, 1, "images", "image too large", max_image_pixels=15)
    assert "4x4" in str(err) and "data.max_image_pixels" in str(err)
    assert len(load_samples(path, max_image_pixels=16)[0]) == 1


def test_row_rejected_by_the_processor(jsonl, png):
    png("a.png")
    path = jsonl([{**GOOD, "image": "a.png"}, {**GOOD, "id": "wide", "image": "a.png"}, GOOD])

    def processor(sample):
        if sample.id == "wide":
            raise ValueError("absolute aspect ratio must be smaller than 200, got 500.0")
        return 10

    # the processor runs for every row even without a length budget (as `vlrl eval` loads)
    for budget in (1024, None):
        err = _error(
            path, 2, "images", "rejected by processor", max_prompt_length=budget, prompt_length=processor
        )
        assert "aspect ratio must be smaller than 200" in str(err)
    samples, report = load_samples(path, prompt_length=processor, skip_invalid=True)
    assert len(samples) == 2 and [(e.line, e.kind) for e in report.skipped] == [(2, "rejected by processor")]


def test_missing_image_names_the_root(tmp_path, png, jsonl):
    path = jsonl([{**GOOD, "image": "nowhere.png"}])
    err = _error(path, 1, "images", "missing image")
    assert (
        f"the data file's folder (set data.image_root / --image-root if the images live elsewhere) {tmp_path}"
        in str(err)
    )
    (tmp_path / "root").mkdir()
    err = _error(path, 1, "images", "missing image", image_root=tmp_path / "root")
    assert f"resolve against the image root {tmp_path / 'root'}" in str(err)


def test_image_root_must_be_a_folder(tmp_path, jsonl):
    with pytest.raises(
        FileNotFoundError, match=r"data\.image_root, --image-root\) is not a folder: .*nowhere"
    ):
        load_samples(jsonl([GOOD]), image_root=tmp_path / "nowhere")


def test_invalid_utf8_names_its_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "q", "answer": "a"}\n{"question": "caf\xe9", "answer": "a"}\n')
    err = _error(path, 2, None, "invalid utf-8")
    assert "not UTF-8" in str(err) and "byte 18 of the line" in str(err)  # the 1-based position of \xe9
    samples, report = load_samples(path, skip_invalid=True)
    assert len(samples) == 1 and report.skipped[0].line == 2


def test_invalid_utf8_in_a_json_list_names_its_line(tmp_path):
    path = tmp_path / "list.json"
    path.write_bytes(b'[\n{"question": "q", "answer": "a"},\n{"question": "caf\xe9", "answer": "a"}\n]')
    with pytest.raises(DataError, match=r"list\.json:3: not UTF-8"):
        load_samples(path)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"question": "q", "answer": NaN}', "answer"),
        ('{"question": "q", "answer": [1, -Infinity]}', "answer[1]"),
        ('{"question": "q", "answer": "a", "meta": {"score": 1e999}}', "meta.score"),
    ],
)
def test_non_finite_numbers_are_refused(jsonl, tmp_path, text, field):
    err = _error(jsonl(['{"question": "q", "answer": "a"}', text]), 2, field, "non-finite number")
    assert "not a JSON number" in str(err)
    path = tmp_path / "list.json"
    path.write_text(f'[{{"question": "q", "answer": "a"}}, {text}]')
    _error(path, 2, field, "non-finite number")


def test_utf8_bom_is_read(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "rows.jsonl").write_bytes(bom + b'{"question": "q", "answer": "a"}\n')
    (tmp_path / "rows.json").write_bytes(bom + b'[{"question": "q", "answer": "a"}]')
    (tmp_path / "lines.json").write_bytes(bom + b'{"question": "q", "answer": "a"}\n')
    for name in ("rows.jsonl", "rows.json", "lines.json"):
        (sample,), _ = load_samples(tmp_path / name)
        assert (sample.question, sample.answer) == ("q", "a")
