"""iou, giou, ovd_map(50), count: hand-worked scores, negatives, coordinates, and the redundancy hack."""

import random

import pytest

from vlrl.evaluation.perception import coco_map
from vlrl.rewards import REWARDS
from vlrl.synth import TASKS
from vlrl.synth.dataset import solution_text
from vlrl.synth.scene import captions

iou, giou, ovd_map, ovd_map50, count = (REWARDS[k] for k in ("iou", "giou", "ovd_map", "ovd_map50", "count"))


def answer(*boxes) -> str:
    return "<think>t</think><answer>" + ", ".join(str(list(b)) for b in boxes) + "</answer>"


def detections(*objects) -> str:
    items = ", ".join(f'{{"bbox_2d": {list(b)}, "label": "{label}"}}' for b, label in objects)
    return f"<think>t</think><answer>[{items}]</answer>"


def one(reward, completion, truth, **fields):
    return reward([completion], answer=[truth], **{k: [v] for k, v in fields.items()})[0]


A, B, C = [0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30]


def test_iou_hand_worked():
    assert one(iou, answer([0, 0, 10, 5]), [A]) == 0.5  # half the box: 50 / 100
    assert one(iou, answer([5, 0, 15, 10]), [A]) == pytest.approx(50 / 150)
    assert one(iou, answer(B), [A]) == 0.0


def test_hungarian_pairs_boxes_for_the_best_total():
    # Greedy in written order would pair p1 with B2 (IoU 2/3), leaving p2 on A2 (1/4): total 11/12.
    # The optimal pairing is p1-A2 (3/7) and p2-B2 (1): total 10/7, over 2 boxes = 5/7.
    a2, b2 = [0, 0, 10, 10], [6, 0, 16, 10]
    p1, p2 = [4, 0, 14, 10], [6, 0, 16, 10]
    assert one(iou, answer(p1, p2), [a2, b2]) == pytest.approx(5 / 7)
    assert one(iou, answer(p2, p1), [b2, a2]) == pytest.approx(5 / 7)  # order does not matter


def test_extra_and_missing_boxes_cost_their_share():
    assert one(iou, answer(A, B), [A]) == 0.5
    assert one(iou, answer(A), [A, B]) == 0.5
    assert one(iou, answer(A, B, C), [A, B]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("reward", [iou, giou, ovd_map, ovd_map50])
@pytest.mark.parametrize(
    ("completion", "truth", "expected"),
    [
        ("<answer>[]</answer>", [], 1.0),  # absent object, answered "none"
        ("<answer>There is no such object.</answer>", [], 1.0),
        (answer(A), [], 0.0),  # absent object, but a box
        ("<answer>none</answer>", [A], 0.0),  # present object, answered "none"
        ("<answer>left of the cat</answer>", [A], 0.0),  # unparsable
        ("<answer>left of the cat</answer>", [], 0.0),  # unparsable is not "none"
        ("", [A], 0.0),
        (answer(A), "3", None),  # not a box task
        (answer(A), None, None),
    ],
)
def test_negatives_failures_and_not_applicable(reward, completion, truth, expected):
    assert one(reward, completion, truth) == expected


def test_boxes_field_is_the_truth_when_present():
    assert iou([answer(A)], answer=[[B]], boxes=[[A]]) == [1.0]
    assert iou([answer(A)], answer=[[A]], boxes=[None]) == [1.0]  # absent in this row


def test_giou_grows_as_a_missing_box_gets_closer():
    far, near, touching = [60, 0, 70, 10], [30, 0, 40, 10], [10, 0, 20, 10]
    scores = [one(giou, answer(b), [A]) for b in (far, near, touching, A)]
    assert scores == sorted(scores) and len(set(scores)) == 4
    assert scores[2] == 0.5 and scores[3] == 1.0  # touching: GIoU 0 -> 0.5
    assert one(iou, answer(far), [A]) == one(iou, answer(touching), [A]) == 0.0


def test_multi_box_scores_agree_on_a_batch():
    completions = [answer(A), answer(A, B), "<answer>[]</answer>"]
    assert iou(completions, answer=[[A], [A, B], []]) == [1.0, 1.0, 1.0]


# ---- the redundancy penalty beats the hack --------------------------------------------------


@pytest.mark.parametrize("reward", [iou, giou, ovd_map, ovd_map50])
def test_repeating_each_true_box_ten_times_scores_lower_than_once(reward):
    truth = [{"bbox": A, "label": "cat"}, {"bbox": B, "label": "dog"}, {"bbox": C, "label": "cat"}]
    objects = [(A, "cat"), (B, "dog"), (C, "cat")]
    once = one(reward, detections(*objects), truth)
    ten = one(reward, detections(*[o for o in objects for _ in range(10)]), truth)
    assert once == pytest.approx(1.0)
    # A tenth for the box rewards (3 matched of 30); ovd_map's s = 3 / 30 also multiplies an AP
    # that the duplicates, false positives ranked between true boxes, have lowered.
    assert ten < once and ten <= 0.1 + 1e-12


@pytest.mark.parametrize("reward", [iou, ovd_map, ovd_map50])
def test_duplicates_never_pay_on_random_scenes(reward):
    rng = random.Random(0)
    for _ in range(60):
        truth = []
        for _ in range(rng.randint(1, 4)):
            x, y, w, h = rng.randint(0, 80), rng.randint(0, 80), rng.randint(5, 30), rng.randint(5, 30)
            truth.append({"bbox": [x, y, x + w, y + h], "label": rng.choice(["cat", "dog"])})
        # Imperfect guesses: jittered boxes, some labels wrong, some boxes left out.
        guesses = [
            ([v + rng.randint(-4, 4) for v in t["bbox"]], t["label"] if rng.random() < 0.8 else "cow")
            for t in truth
            if rng.random() < 0.8
        ] or [([0, 0, 5, 5], "cat")]
        once = one(reward, detections(*guesses), truth)
        repeated = one(reward, detections(*[g for g in guesses for _ in range(rng.randint(2, 10))]), truth)
        assert repeated <= once + 1e-12, (truth, guesses)


# ---- ovd_map ---------------------------------------------------------------------------------


def test_ovd_labels_are_categories():
    truth = [{"bbox": A, "label": "cat"}, {"bbox": B, "label": "dog"}]
    assert one(ovd_map, detections((A, "cat"), (B, "dog")), truth) == pytest.approx(1.0)
    assert one(ovd_map, detections((A, " Cat "), (B, "DOG")), truth) == pytest.approx(1.0)  # case, spaces
    assert one(ovd_map, detections((A, "dog"), (B, "cat")), truth) == 0.0  # right boxes, swapped labels
    # Only the cat found: AP 1 for cat, 0 for dog.
    assert one(ovd_map, detections((A, "cat")), truth) == pytest.approx(0.5)


def test_ovd_unknown_labels_cost_through_the_length_factor():
    # COCO leaves "unicorn" (no truth) out of the mean, so mAP stays 1; s = min(1, 1 / 2) halves it.
    truth = [{"bbox": A, "label": "cat"}]
    assert one(ovd_map, detections((A, "cat"), (B, "unicorn")), truth) == pytest.approx(0.5)


def test_ovd_truth_without_labels_is_class_agnostic():
    assert one(ovd_map, detections((A, "anything")), [A]) == pytest.approx(1.0)
    assert one(ovd_map, answer(A), [A]) == pytest.approx(1.0)


def test_ovd_written_order_is_the_ranking():
    # One cat. Right box first: precision 1 at full recall, AP 1, times s = 1/2. Wrong box first:
    # full recall only at the second box, precision 1/2, AP 1/2, times 1/2.
    truth = [{"bbox": A, "label": "cat"}]
    assert one(ovd_map, detections((A, "cat"), (B, "cat")), truth) == pytest.approx(0.5)
    assert one(ovd_map, detections((B, "cat"), (A, "cat")), truth) == pytest.approx(0.25)


def test_ovd_map50_is_lenient_where_ovd_map_is_strict():
    loose = [0, 0, 10, 7]  # IoU 0.7: a hit at 0.5..0.7, a miss at 0.75..0.95
    assert one(ovd_map50, answer(loose), [A]) == pytest.approx(1.0)
    assert one(ovd_map, answer(loose), [A]) == pytest.approx(5 / 10)


def test_ovd_equals_pycocotools_times_the_length_factor():
    rng = random.Random(1)
    labels = ["cat", "dog", "cow"]
    for _ in range(20):
        truth = []
        for _ in range(rng.randint(1, 5)):
            x, y = rng.randint(0, 60), rng.randint(0, 60)
            truth.append(([x, y, x + rng.randint(4, 40), y + rng.randint(4, 40)], rng.choice(labels)))
        guesses = [([v + rng.randint(-5, 5) for v in box], rng.choice(labels)) for box, _ in truth]
        guesses += [(box, label) for box, label in truth if rng.random() < 0.5]
        guesses = [(b, lab) for b, lab in guesses if b[2] > b[0] and b[3] > b[1]]
        ranked = [(b, lab, 1.0 - i / len(guesses)) for i, (b, lab) in enumerate(guesses)]
        expected = min(1.0, len(truth) / len(guesses)) * coco_map([ranked], [truth])["map"]
        fields = [{"bbox": b, "label": lab} for b, lab in truth]
        assert one(ovd_map, detections(*guesses), fields) == pytest.approx(expected, abs=1e-9)


# ---- coordinates -----------------------------------------------------------------------------


def test_norm1000_and_resized_boxes_are_converted_to_pixels():
    truth = [[0, 0, 100, 50]]
    size, resized = [200, 100], [100, 50]
    assert one(iou, answer([0, 0, 500, 500]), truth, box_convention="norm1000", image_size=size) == 1.0
    got = one(iou, answer([0, 0, 50, 25]), truth, box_convention="resized_abs", image_size=size,
              model_image_size=resized)  # fmt: skip
    assert got == 1.0
    assert one(iou, answer([0, 0, 100, 50]), truth, box_convention="pixels") == 1.0
    assert one(iou, answer([0, 0, 500, 500]), truth) == pytest.approx(5000 / 250_000)  # read as pixels


def test_bad_convention_fields_name_the_problem():
    with pytest.raises(ValueError, match="unknown box_convention 'norm100'.*norm1000"):
        one(iou, answer(A), [A], box_convention="norm100", image_size=[10, 10])
    with pytest.raises(ValueError, match="image_size"):
        one(iou, answer(A), [A], box_convention="norm1000")
    with pytest.raises(ValueError, match="model_image_size"):
        one(iou, answer(A), [A], box_convention="resized_abs", image_size=[10, 10])
    # A sample the reward does not apply to needs no sizes.
    assert one(iou, answer(A), "3", box_convention="norm1000") is None


# ---- count -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "truth", "expected"),
    [
        ("<answer>3</answer>", "3", 1.0),
        ("<answer>3</answer>", 3, 1.0),
        ("<answer> 3 </answer>", " 3 ", 1.0),
        ("<answer>There are 3 cats.</answer>", "3", 1.0),
        ("<answer>2 red + 1 blue = 3</answer>", "3", 1.0),  # the last number is the count
        ("<answer>4</answer>", "3", 0.0),
        ("<answer>3.0</answer>", "3", 1.0),
        ("<answer>3.5</answer>", "3", 0.0),
        ("<answer>[1, 1, 5, 5], [6, 6, 9, 9], [10, 10, 20, 20]</answer>", "3", 1.0),  # boxes: how many
        ("<answer>none</answer>", "0", 1.0),
        ("<answer>[]</answer>", "0", 1.0),
        ("<answer>0</answer>", "0", 1.0),
        ("<answer>many</answer>", "3", 0.0),
        ("3", "3", 1.0),  # no tags: the whole text
        ("<answer>" + "9" * 50 + "</answer>", "3", 0.0),
        ("<answer>3</answer>", "three", None),  # not a count
        ("<answer>3</answer>", "yes", None),
        ("<answer>3</answer>", [A], None),  # boxes: a box reward's sample
        ("<answer>3</answer>", True, None),
        ("<answer>3</answer>", -1, None),
        ("<answer>3</answer>", "1" * 5000, None),  # would exceed int()'s digit limit
    ],
)
def test_count(completion, truth, expected):
    assert one(count, completion, truth) == expected


def test_count_tolerance():
    completions = ["<answer>5</answer>"] * 3
    assert count(completions, answer=["3", "4", "5"], count_tolerance=[1, 1, 0]) == [0.0, 1.0, 1.0]


# ---- the rewards on the synthetic tasks ------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "reward", "fields"),
    [
        ("grounding", "iou", {}),
        ("grounding", "giou", {}),
        ("referring", "iou", {}),
        ("detection", "iou", {}),
        ("detection", "ovd_map", {}),
        ("detection", "ovd_map50", {}),
        ("counting", "count", {}),
    ],
)
def test_a_task_solution_earns_full_reward(task, reward, fields):
    rng = random.Random(5)
    for _ in range(30):
        item = TASKS[task](rng, 112)
        solution = solution_text(item, captions(item.scenes, 112))
        row = {"answer": [item.answer], **{k: [v] for k, v in item.extra.items()}}
        assert REWARDS[reward]([solution], **row)[0] == pytest.approx(1.0), solution


def test_mixed_batch_each_reward_scores_its_own_samples():
    completions = [answer(A), "<answer>3</answer>", detections((A, "cat"))]
    truths = [[A], "3", [{"bbox": A, "label": "cat"}]]
    assert iou(completions, answer=truths) == [1.0, None, 1.0]
    assert count(completions, answer=truths) == [None, 1.0, None]
    assert REWARDS["accuracy"](completions, answer=truths) == [None, 1.0, None]
