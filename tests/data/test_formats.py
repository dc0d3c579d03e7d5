"""Converters of peer layouts are pure dict -> canonical dict; detection votes by keys."""

import pytest

from vlrl.data.formats import FORMATS, RowProblem, detect_format, parse_answer


def test_parse_answer_takes_inside_of_answer_tags_and_json_lists():
    assert parse_answer("<think>2+1</think><answer> 3 </answer>") == "3"
    assert parse_answer("[10, 20, 30, 40]") == [10, 20, 30, 40]
    assert parse_answer("<answer>[1.5, 2, 3, 4]</answer>") == [1.5, 2, 3, 4]
    assert parse_answer("[A] is right") == "[A] is right"  # not wholly a JSON list
    assert parse_answer('["unclosed') == '["unclosed'


def test_canonical_accepts_single_image_key_and_passes_extras():
    row = {"image": "a.png", "question": "q", "answer": "1", "difficulty": 3}
    assert FORMATS["canonical"](row) == {"images": "a.png", "question": "q", "answer": "1", "difficulty": 3}
    assert "image" in row  # pure: the input row is left as it was


def test_canonical_rejects_both_image_keys():
    with pytest.raises(RowProblem) as err:
        FORMATS["canonical"]({"image": "a.png", "images": ["b.png"]})
    assert err.value.field_name == "image"


def test_maye_rows_are_canonical():
    row = {"question": "q", "answer": "2", "solution": "1+1=2", "image": "a.png"}
    assert FORMATS["maye"](row) == {"question": "q", "answer": "2", "solution": "1+1=2", "images": "a.png"}


def test_vlm_r1_keeps_markers_and_parses_box_answers():
    row = {
        "id": 7,
        "image": ["a.jpg", "b.jpg"],
        "conversations": [
            {"from": "human", "value": "<image><image>Where is the cat?"},
            {"from": "gpt", "value": "[10, 20, 30, 40]"},
            {"from": "human", "value": "later turn, ignored"},
        ],
    }
    out = FORMATS["vlm_r1"](row)
    assert out == {
        "id": 7,
        "images": ["a.jpg", "b.jpg"],
        "question": "<image><image>Where is the cat?",
        "answer": [10, 20, 30, 40],
    }


def test_vlm_r1_rejects_malformed_conversations():
    with pytest.raises(RowProblem) as err:
        FORMATS["vlm_r1"]({"conversations": "What?"})
    assert err.value.field_name == "conversations"


def test_r1v_extracts_answer_and_keeps_full_solution():
    row = {"image": "a.png", "problem": "How many?", "solution": "<answer> 3 </answer>", "source": "clevr"}
    out = FORMATS["r1v"](row)
    assert out == {
        "images": "a.png",
        "question": "How many?",
        "answer": "3",
        "solution": "<answer> 3 </answer>",
        "source": "clevr",
    }


def test_r1v_keeps_an_existing_answer_and_box_solutions():
    assert FORMATS["r1v"]({"problem": "q", "answer": "5"})["answer"] == "5"
    out = FORMATS["r1v"]({"problem": "q", "solution": [1, 2, 3, 4]})
    assert out["answer"] == [1, 2, 3, 4] and "solution" not in out


def test_detect_format_votes_by_keys():
    assert detect_format([{"conversations": []}, {"conversations": []}, {"question": "q"}]) == "vlm_r1"
    assert detect_format([{"problem": "q", "solution": "s"}]) == "r1v"
    assert detect_format([{"question": "q", "solution": "s"}, "not a row"]) == "canonical"
    assert detect_format([]) == "canonical"
