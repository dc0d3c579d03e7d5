"""Boxes written in each family's convention come back to original pixels through the reward path.

Ground truth in original pixels goes out through `adapter.box_from_pixels` (as an SFT target or a
model would write it, in the family's own text format) and comes back through the rewards with the
fields the trainer sets from the adapter. The image is 500x333, which every family resizes
(Qwen2.5-VL's absolute coordinates then differ from the original pixels).
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from vlrl.models.adapters import ADAPTERS, adapter_class
from vlrl.models.loading import load_processor
from vlrl.rewards import REWARDS
from vlrl.rewards.boxes import parse_boxes
from vlrl.rewards.perception import CONVENTIONS

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "internvl", "idefics3")
SIZE = (500, 333)
TRUTH = [([40, 30, 210, 150], "red circle"), ([300, 200, 480, 320], "blue square")]


@pytest.fixture(scope="module")
def adapters(tiny_models):
    out = {}
    for family in FAMILIES:
        path = tiny_models[family]
        out[family] = adapter_class(AutoConfig.from_pretrained(path).model_type)(load_processor(path))
    return out


def written(family: str, boxes: list[tuple[list[float], str]]) -> str:
    """Boxes in the family's own grounding text format, inside the R1 answer."""
    if family == "qwen2_vl":
        body = "".join(
            f"<|object_ref_start|>{label}<|object_ref_end|><|box_start|>({b[0]},{b[1]}),({b[2]},{b[3]})<|box_end|>"
            for b, label in boxes
        )
    elif family == "qwen2_5_vl":
        body = "```json\n" + json.dumps([{"bbox_2d": b, "label": label} for b, label in boxes]) + "\n```"
    else:
        body = "".join(f"<ref>{label}</ref><box>[{b}]</box>" for b, label in boxes)
    return f"<think>found them</think><answer>{body}</answer>"


def fields(adapter, convention: str | None = None) -> dict[str, list]:
    """What the trainer adds per sample from the adapter."""
    return {
        "answer": [[{"bbox": b, "label": label} for b, label in TRUTH]],
        "box_convention": [convention or adapter.box_convention],
        "image_size": [list(SIZE)],
        "model_image_size": [list(adapter.model_image_size(SIZE))],
    }


def test_every_adapter_convention_is_known_to_the_rewards():
    assert {cls.box_convention for cls in ADAPTERS.values()} <= set(CONVENTIONS)


def test_qwen2_5_vl_sees_a_resized_image(adapters):
    model_size = adapters["qwen2_5_vl"].model_image_size(SIZE)
    assert model_size != SIZE and all(v % 28 == 0 for v in model_size)


@pytest.mark.parametrize("family", FAMILIES)
def test_truth_round_trips_through_the_reward_path(adapters, family):
    adapter = adapters[family]
    out = [(adapter.box_from_pixels(b, SIZE), label) for b, label in TRUTH]
    completion = written(family, out)
    assert [label for _, label in parse_boxes(completion)] == [label for _, label in TRUTH]
    # Integer rounding in the model's frame moves each side by at most half a model unit, e =
    # 0.5 * original / model pixels (about 1 px for Qwen2.5-VL here, 0.25 px for 0-1000), which
    # costs a w x h box at most about 2e / w + 2e / h <= 4e / min(w, h) of its IoU.
    model_w, model_h = adapter.model_image_size(SIZE)
    scale = {"norm1000": 1000 / max(SIZE), "resized_abs": min(model_w / SIZE[0], model_h / SIZE[1])}
    e = 0.5 / scale[adapter.box_convention]
    shortest = min(min(b[2] - b[0], b[3] - b[1]) for b, _ in TRUTH)
    assert 1 - 4 * e / shortest <= REWARDS["iou"]([completion], **fields(adapter))[0] <= 1.0
    assert REWARDS["ovd_map50"]([completion], **fields(adapter))[0] == pytest.approx(1.0)


@pytest.mark.parametrize("wrong", ["pixels", "norm1000"])
def test_a_qwen2_5_vl_box_read_in_the_wrong_convention_scores_badly(adapters, wrong):
    adapter = adapters["qwen2_5_vl"]
    completion = written("qwen2_5_vl", [(adapter.box_from_pixels(b, SIZE), label) for b, label in TRUTH])
    right = REWARDS["iou"]([completion], **fields(adapter))[0]
    assert REWARDS["iou"]([completion], **fields(adapter, wrong))[0] < 0.5 < right
    assert REWARDS["ovd_map"]([completion], **fields(adapter, wrong))[0] < 0.2


def test_a_norm1000_box_read_as_pixels_scores_nothing(adapters):
    adapter = adapters["qwen2_vl"]
    completion = written("qwen2_vl", [(adapter.box_from_pixels(b, SIZE), label) for b, label in TRUTH])
    assert REWARDS["iou"]([completion], **fields(adapter, "pixels"))[0] < 0.2


def test_a_smaller_pixel_budget_changes_qwen2_5_vl_coordinates_not_the_score(tiny_models):
    path = tiny_models["qwen2_5_vl"]
    small = adapter_class("qwen2_5_vl")(load_processor(path), max_pixels=28 * 28 * 40)
    assert small.model_image_size(SIZE) != adapter_class("qwen2_5_vl")(load_processor(path)).model_image_size(
        SIZE
    )
    completion = written("qwen2_5_vl", [(small.box_from_pixels(b, SIZE), label) for b, label in TRUTH])
    assert REWARDS["iou"]([completion], **fields(small))[0] > 0.95
