"""Perception metrics; the numpy COCO AP against pycocotools, the oracle, on randomised datasets."""

import contextlib
import io
import random

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vlrl.evaluation.perception import coco_map, count_accuracy, rec_accuracy
from vlrl.rewards.boxes import IOU_THRESHOLDS, average_precision, average_recall, canonical_order


def oracle(predictions, ground_truth, recall: bool = False) -> np.ndarray | None:
    """[T] pycocotools' mAP (or with `recall`, AR@100) at each IoU threshold, images in
    `canonical_order` as ours are (pycocotools ranks detections with tied scores by image id)."""
    order = canonical_order(predictions, ground_truth)
    predictions, ground_truth = [predictions[i] for i in order], [ground_truth[i] for i in order]
    labels = sorted({lab for im in ground_truth for _, lab in im} | {d[1] for im in predictions for d in im})
    ids = {label: k for k, label in enumerate(labels, 1)}

    def build(images, scored):
        anns = []
        for image_id, objects in enumerate(images, 1):
            for obj in objects:
                (x1, y1, x2, y2), label = obj[0], obj[1]
                ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": ids[label], "iscrowd": 0}
                ann |= {"bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
                anns.append(ann | ({"score": obj[2]} if scored else {}))
        coco = COCO()
        coco.dataset = {
            "images": [{"id": i + 1} for i in range(len(images))],
            "categories": [{"id": k} for k in ids.values()],
            "annotations": anns,
        }
        coco.createIndex()
        return coco

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(build(ground_truth, False), build(predictions, True), "bbox")
        ev.evaluate()
        ev.accumulate()
    if recall:
        found = ev.eval["recall"][:, :, 0, -1]  # [T, K] at area "all", 100 detections
        valid = found[0] > -1  # categories with truth
        return None if not valid.any() else found[:, valid].mean(axis=1)
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K] at area "all", 100 detections
    valid = precision[0, 0] > -1
    return None if not valid.any() else precision[:, :, valid].mean(axis=(1, 2))


def random_box(rng, size=100, lo=2, hi=40, integer=True):
    w, h = rng.uniform(lo, hi), rng.uniform(lo, hi)
    x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
    box = [x, y, x + w, y + h]
    return [float(round(v)) for v in box] if integer else box


def jitter(rng, box, amount, integer):
    out = [v + rng.uniform(-amount, amount) for v in box]
    out = [float(round(v)) for v in out] if integer else out
    return out if out[2] > out[0] and out[3] > out[1] else box


def random_dataset(rng):
    """Images with 0-6 truths in 1-3 categories; predictions near the truths (straddling every IoU
    threshold), exact duplicates, wrong labels, strays, tied scores, empty images on either side."""
    labels = ["cat", "dog", "cow"][: rng.randint(1, 3)]
    integer = rng.random() < 0.6  # integer boxes make exact IoU ties (0.5, 0.75, ...) likely
    predictions, truth = [], []
    for _ in range(rng.randint(1, 10)):
        gt = [
            (random_box(rng, integer=integer), rng.choice(labels))
            for _ in range(rng.choice([0, 0, 1, 2, 3, 6]))
        ]
        dt = []
        if rng.random() > 0.15:  # sometimes nothing predicted
            for box, label in gt:
                for _ in range(rng.choice([0, 1, 1, 2, 3])):
                    guess = jitter(rng, box, rng.choice([0, 1, 3, 8]), integer)
                    dt.append((guess, label if rng.random() < 0.85 else rng.choice([*labels, "eel"])))
            dt += [(random_box(rng, integer=integer), rng.choice(labels)) for _ in range(rng.randint(0, 3))]
            dt += [d for d in dt if rng.random() < 0.2]  # exact duplicates
        # Scores with ties (one decimal) or distinct.
        tie = rng.random() < 0.5
        dt = [(b, lab, round(rng.random(), 1) if tie else rng.random()) for b, lab in dt]
        predictions.append(dt)
        truth.append(gt)
    return predictions, truth


def assert_same(ours, theirs):
    assert (ours is None) == (theirs is None)
    if ours is not None:
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_numpy_ap_equals_pycocotools_on_random_datasets(seed):
    rng = random.Random(seed)
    for _ in range(15):
        predictions, truth = random_dataset(rng)
        assert_same(average_precision(predictions, truth), oracle(predictions, truth))
        assert_same(average_recall(predictions, truth), oracle(predictions, truth, recall=True))
        for p, t in zip(predictions, truth, strict=True):  # each image alone: the reward's case
            assert_same(average_precision([p], [t]), oracle([p], [t]))


def test_coco_map_reports_the_oracle():
    rng = random.Random(10)
    for _ in range(10):
        predictions, truth = random_dataset(rng)
        expected = oracle(predictions, truth)
        got = coco_map(predictions, truth)
        if expected is None:
            assert got == {"map": None, "map50": None, "map75": None, "mar100": None}
            continue
        assert got["mar100"] == pytest.approx(oracle(predictions, truth, recall=True).mean(), abs=1e-6)
        assert got["map"] == pytest.approx(expected.mean(), abs=1e-6)
        assert got["map50"] == pytest.approx(expected[0], abs=1e-6)
        assert got["map75"] == pytest.approx(expected[list(IOU_THRESHOLDS).index(0.75)], abs=1e-6)
        ours = average_precision(predictions, truth)
        assert ours.mean() == pytest.approx(got["map"], abs=1e-6)


def test_ties_between_truths_go_to_the_later_one_as_in_pycocotools():
    # The first detection overlaps both truths equally (9/11 = 0.82); pycocotools gives it the later
    # one, so the second, an exact copy of the first truth, is a hit too: AP 1 up to IoU 0.8. Had
    # the tie gone to the first truth, the second detection would overlap the other only 8/12.
    truth = [[([0, 0, 10, 10], "a"), ([2, 0, 12, 10], "a")]]
    predictions = [[([1, 0, 11, 10], "a", 0.9), ([0, 0, 10, 10], "a", 0.8)]]
    ap = average_precision(predictions, truth)
    assert_same(ap, oracle(predictions, truth))
    assert ap[IOU_THRESHOLDS <= 0.8] == pytest.approx(1.0)


def test_exact_threshold_iou_is_a_hit():
    truth = [[([0, 0, 10, 10], "a")]]
    predictions = [[([0, 0, 10, 5], "a", 1.0)]]  # IoU exactly 0.5
    ap = average_precision(predictions, truth)
    assert_same(ap, oracle(predictions, truth))
    assert ap[0] == pytest.approx(1.0) and ap[1] == 0.0


def test_more_than_100_detections_per_image_are_cut_by_score():
    rng = random.Random(3)
    truth = [[(random_box(rng), "a") for _ in range(5)]]
    strays = [(random_box(rng), "a", 0.1 + rng.random() * 0.5) for _ in range(150)]
    # Two hits rank above every stray, one among them, two below all 150: cut off at 100.
    hits = [(box, "a", score) for (box, _), score in zip(truth[0], [0.9, 0.8, 0.3, 0.05, 0.01], strict=True)]
    predictions = [strays + hits]
    ap = average_precision(predictions, truth)
    assert_same(ap, oracle(predictions, truth))
    assert ap[0] <= 3 / 5  # recall never reaches past 3 of 5


def test_empty_sides():
    truth = [[([0, 0, 10, 10], "a")], []]
    assert average_precision([[], []], truth).tolist() == [0.0] * 10  # truth, no predictions
    assert coco_map([[], []], truth) == {"map": 0.0, "map50": 0.0, "map75": 0.0, "mar100": 0.0}
    assert average_recall([[], []], truth).tolist() == [0.0] * 10
    assert average_precision([[([0, 0, 10, 10], "a", 1.0)]], [[]]) is None  # nothing to find
    assert coco_map([[([0, 0, 10, 10], "a", 1.0)]], [[]]) == {
        "map": None,
        "map50": None,
        "map75": None,
        "mar100": None,
    }
    # A prediction on an image without truth is a false positive for the dataset.
    with_stray = [[([0, 0, 10, 10], "a", 0.5)], [([0, 0, 10, 10], "a", 0.9)]]
    assert average_precision(with_stray, truth)[0] == pytest.approx(coco_map(with_stray, truth)["map50"])
    assert coco_map(with_stray, truth)["map50"] == pytest.approx(0.5, abs=1e-6)


def test_tied_scores_across_images_do_not_depend_on_image_order():
    # Image 1 has a hit, image 2 a miss, both at score 1.0; recall stops at 1/2, so AP@0.5 is
    # precision at the 51 recall points 0, 0.01, ..., 0.5 over 101: ranked hit first that is 1
    # (51 / 101), miss first 1/2 (25.5 / 101). By content, image 1 (truth [0, ...]) sorts before
    # image 2 (truth [20, ...]): hit first, whichever order they come in.
    truth = [[([0, 0, 10, 10], "a")], [([20, 20, 30, 30], "a")]]
    predictions = [[([0, 0, 10, 10], "a", 1.0)], [([50, 50, 60, 60], "a", 1.0)]]
    expected = 51 / 101
    for order in ([0, 1], [1, 0]):
        preds, truths = [predictions[i] for i in order], [truth[i] for i in order]
        assert average_precision(preds, truths)[0] == pytest.approx(expected)
        assert coco_map(preds, truths)["map50"] == pytest.approx(expected, abs=1e-6)
        assert coco_map(preds, truths)["mar100"] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_shuffling_images_changes_nothing(seed):
    rng = random.Random(100 + seed)
    for _ in range(5):
        predictions, truth = random_dataset(rng)
        order = list(range(len(truth)))
        rng.shuffle(order)
        shuffled = [predictions[i] for i in order], [truth[i] for i in order]
        assert_same(average_precision(*shuffled), average_precision(predictions, truth))
        assert coco_map(*shuffled) == pytest.approx(coco_map(predictions, truth), abs=1e-12)


def test_mismatched_lengths_fail():
    with pytest.raises(ValueError, match="1 prediction lists for 2 images"):
        average_precision([[]], [[], []])
    with pytest.raises(ValueError, match="1 prediction lists for 2 images"):
        coco_map([[]], [[], []])
    with pytest.raises(ValueError, match="one prediction per sample"):
        rec_accuracy([[]], [[], []])
    with pytest.raises(ValueError, match="one prediction per sample"):
        count_accuracy([1], [1, 2])


def test_rec_accuracy():
    box = [0, 0, 10, 10]
    cases = [
        ([[0, 0, 10, 5]], [box], True),  # IoU exactly 0.5
        ([[0, 0, 10, 4]], [box], False),  # IoU 0.4
        ([], [], True),  # absent object, none predicted
        ([box], [], False),
        ([], [box], False),
        (None, [box], False),  # unparsable
        ([box, box], [box], False),  # a second box is a wrong answer
        ([[20, 0, 30, 10], box], [box, [20, 0, 30, 10]], True),  # order does not matter
        ([box, box], [box, [20, 0, 30, 10]], False),  # one truth cannot serve two predictions
    ]
    preds, truths, right = zip(*cases, strict=True)
    assert rec_accuracy(preds, truths) == pytest.approx(sum(right) / len(cases))
    assert rec_accuracy([[[0, 0, 10, 4]]], [[box]], threshold=0.4) == 1.0


def test_count_accuracy():
    assert count_accuracy([3, 2, None, 0], [3, 3, 3, 0]) == 0.5
    assert count_accuracy([3, 2, None, 0], [3, 3, 3, 0], tolerance=1) == 0.75
