"""vlrl.io.jsonl: the one JSONL writer and reader (whole flushed lines, a killed writer's partial line)."""

import doctest
import json
import math

import pytest

from vlrl.io import JsonlAppender, append_jsonl, jsonl, read_jsonl, truncate_jsonl, write_jsonl


def test_doctests():
    assert doctest.testmod(jsonl).failed == 0


def test_lines_are_utf8_objects_one_per_line(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    write_jsonl(path, [{"id": "é", "n": 1}, {"id": "b", "n": [1, 2]}])
    assert path.read_bytes() == '{"id": "é", "n": 1}\n{"id": "b", "n": [1, 2]}\n'.encode()
    assert read_jsonl(path) == [{"id": "é", "n": 1}, {"id": "b", "n": [1, 2]}]
    assert not (tmp_path / "sub" / "rows.jsonl.tmp").exists()  # written aside, then renamed


def test_non_finite_numbers_are_refused_rather_than_written_as_invalid_json(tmp_path):
    with pytest.raises(ValueError, match="Out of range float"):
        write_jsonl(tmp_path / "x.jsonl", [{"v": math.nan}])


def test_default_converts_what_json_cannot_hold(tmp_path):
    append_jsonl(tmp_path / "x.jsonl", [{"v": (1, 2), "c": complex(1, 2)}], default=str)
    assert read_jsonl(tmp_path / "x.jsonl") == [{"v": [1, 2], "c": "(1+2j)"}]


def test_a_killed_writers_partial_line_is_skipped_by_the_reader_and_cut_by_the_next_appender(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, [{"step": 1}, {"step": 2}])
    with path.open("a") as f:
        f.write(json.dumps({"step": 3})[:5])  # killed mid-write
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    with JsonlAppender(path) as out:
        out.write({"step": 3})
    assert path.read_text().splitlines() == ['{"step": 1}', '{"step": 2}', '{"step": 3}']


def test_a_partial_line_with_no_complete_line_before_it_empties_the_file(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"st')
    append_jsonl(path, [{"step": 1}])
    assert read_jsonl(path) == [{"step": 1}]


def test_a_malformed_complete_line_names_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: not a JSON line"):
        read_jsonl(path)


def test_truncate_keeps_the_steps_up_to_a_checkpoint(tmp_path):
    path = tmp_path / "m.jsonl"
    write_jsonl(path, [{"step": s} for s in (1, 2, 3, 2)])
    truncate_jsonl(path, 2)
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}, {"step": 2}]
    truncate_jsonl(tmp_path / "missing.jsonl", 0)
    assert not (tmp_path / "missing.jsonl").exists()
