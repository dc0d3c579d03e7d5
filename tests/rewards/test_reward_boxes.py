"""Box parsing: the shapes models write, empty answers, malformed ones, and hostile ones."""

import time

import pytest

from vlrl.rewards.boxes import MAX_BOXES, MAX_CHARS, parse_boxes, truth_boxes

CAT = [([10.0, 20.0, 50.0, 60.0], "cat")]
BOX = [([10.0, 20.0, 50.0, 60.0], None)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[10, 20, 50, 60]", BOX),
        ("<answer>[10,20,50,60]</answer>", BOX),
        ("<answer>  [ 10 , 20 ,\n 50 , 60 ]  </answer>", BOX),
        ("<answer>(10, 20, 50, 60)</answer>", BOX),
        ("<answer>[10.0, 20.0, 50.0, 60.0]</answer>", BOX),
        ("<answer>The box is [10, 20, 50, 60], I think.</answer>", BOX),  # text around
        ("<answer>(10,20),(50,60)</answer>", BOX),  # Qwen2-VL points
        ("<|box_start|>(10,20),(50,60)<|box_end|>", BOX),
        ("<|object_ref_start|>cat<|object_ref_end|><|box_start|>(10,20),(50,60)<|box_end|>", CAT),
        ("<ref>cat</ref><box>[[10, 20, 50, 60]]</box>", CAT),  # InternVL
        ('{"bbox_2d": [10, 20, 50, 60], "label": "cat"}', CAT),  # Qwen2.5-VL JSON
        ('[{"bbox_2d": [10, 20, 50, 60], "label": " cat "}]', CAT),
        ('```json\n[\n\t{"bbox": [10, 20, 50, 60], "label": "cat"}\n]\n```', CAT),  # code fence
        ("[{'bbox': [10, 20, 50, 60], 'label': 'cat'}]", CAT),  # Python-style quotes
        ('{"label": "cat", "bbox_2d": [10, 20, 50, 60]}', CAT),  # label first
        ("<answer>[[10, 20, 50, 60], [1, 2, 3, 4]]</answer>", [*BOX, ([1.0, 2.0, 3.0, 4.0], None)]),
        (
            '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}]',
            [([1.0, 2.0, 3.0, 4.0], "a"), ([5.0, 6.0, 7.0, 8.0], "b")],
        ),  # fmt: skip
        # Truncated JSON (the model ran out of tokens): the complete objects still count.
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6', [([1.0, 2.0, 3.0, 4.0], "a")]),
    ],
)
def test_box_shapes(text, expected):
    assert parse_boxes(text) == expected


def test_last_answer_only_and_whole_text_without_tags():
    text = "<think>maybe [0, 0, 5, 5]</think><answer>[10, 20, 50, 60]</answer>"
    assert parse_boxes(text) == BOX
    # Without answer tags the whole text is read, reasoning included: both boxes count.
    assert parse_boxes("maybe [0, 0, 5, 5], no: [10, 20, 50, 60]") == [([0.0, 0.0, 5.0, 5.0], None), *BOX]


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "<answer>[]</answer>",
        "```json\n[]\n```",
        "None",
        "<answer>none</answer>",
        "No objects found.",
        "There is no such object.",
        "The cat is not present.",
        "null",
    ],  # fmt: skip
)
def test_empty_answers(text):
    assert parse_boxes(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<answer></answer>",
        "<answer>the cat on the left</answer>",
        "<answer>[10, 20, 50]</answer>",  # three numbers
        "<answer>[10, 20, 50, sixty]</answer>",
        '{"label": "cat"}',  # an object without a box
        "<answer>[50, 20, 10, 60]</answer>",  # x2 < x1: degenerate, and the only box
        "<answer>[10, 20, 10, 60]</answer>",  # zero width
        "<answer>[10, 20, 50, 999999999]</answer>",  # beyond MAX_COORD
    ],
)
def test_malformed_is_none_not_empty(text):
    assert parse_boxes(text) is None


def test_degenerate_boxes_are_dropped_beside_good_ones():
    assert parse_boxes("[10, 20, 50, 60], [5, 5, 5, 9], [9, 9, 1, 1]") == BOX


def test_a_degenerate_box_is_not_an_empty_answer():
    # "none" next to a box that was written but is unusable: a failure, not a negative answer.
    assert parse_boxes("none [5, 5, 5, 9]") is None


def test_negative_coordinates_parse():
    assert parse_boxes("[-5, -5, 10, 10]") == [([-5.0, -5.0, 10.0, 10.0], None)]


def test_caps():
    boxes = ", ".join("[1, 1, 5, 5]" for _ in range(MAX_BOXES))
    assert len(parse_boxes(boxes)) == MAX_BOXES
    assert parse_boxes(boxes + ", [1, 1, 5, 5]") is None
    long = "[1, 1, 5, 5]" + " " * MAX_CHARS
    assert parse_boxes(long) is None
    # The cap is on the answer, not on the completion around it.
    assert parse_boxes("<think>" + "x" * MAX_CHARS + "</think><answer>[1, 1, 5, 5]</answer>") is not None


@pytest.mark.parametrize(
    "hostile",
    [
        "[" * 1_000_000,
        "{" * 1_000_000,
        "(1," * 300_000,
        "[1, 2, 3, " * 100_000,
        "<answer>" + "[1" + "1" * 19_000 + "</answer>",
        "<answer>" + "{" + "a" * 19_000 + "</answer>",
        "<answer>" + "{a" * 9_000 + "</answer>",
        "<answer>" + "<ref>" * 3_000 + "</answer>",
        "<answer>" + "(1, 2) " * 2_500 + "</answer>",
        "<answer>" + "[1, 2, 3, 4] " * 1_500 + "</answer>",
        "<answer>" + "9" * 19_000 + "</answer>",
        "[" * 19_000,  # under the cap, no answer tags: the whole text is scanned
        "(1, " * 4_000,
        "[1, 2, 3, 4" * 1_500,
        "{" + '"label": "a", ' * 1_000,
    ],
)
def test_hostile_text_is_fast_and_never_raises(hostile):
    start = time.monotonic()
    result = parse_boxes(hostile)
    assert time.monotonic() - start < 1.0
    assert result is None or isinstance(result, list)


def test_huge_numbers_do_not_overflow():
    # float("9" * 400) is inf: such a box is out of range, not a crash or an infinite IoU.
    assert parse_boxes(f"[1, 1, {'9' * 400}, 5]") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([10, 20, 50, 60], BOX),
        ([[10, 20, 50, 60]], BOX),
        ([(10, 20, 50, 60)], BOX),
        ([{"bbox": [10, 20, 50, 60], "label": "cat"}], CAT),
        ([{"bbox_2d": [10, 20, 50, 60], "label": "cat"}], CAT),
        ([{"bbox": [10, 20, 50, 60]}], BOX),
        ([], []),
        ("3", None),
        ("[10, 20, 50, 60]", None),  # a string is never boxes
        (3, None),
        (None, None),
        (["a", "b"], None),
        ([[10, 20, 50, 60], "x"], None),
        ([True, False, True, True], None),
        ([{"label": "cat"}], None),
    ],
)
def test_truth_boxes(value, expected):
    assert truth_boxes(value) == expected
