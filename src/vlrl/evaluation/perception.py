"""Perception metrics over a dataset: REC accuracy, COCO mAP, counting accuracy.

Boxes are `[x1, y1, x2, y2]` in pixels of the original image (x2, y2 exclusive, as in COCO).
COCO mAP comes in two implementations that agree to 1e-6 (tests/evaluation hold them to each other
on randomised datasets): `coco_map` here runs pycocotools' `COCOeval` itself, for numbers
comparable with papers; `vlrl.rewards.boxes.average_precision` is the short numpy version the
per-sample `ovd_map` reward uses (fast, silent). The box maths lives with the rewards because
this package builds on them, not the other way round.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from scipy.optimize import linear_sum_assignment

from vlrl.rewards.boxes import Detection, Truth, canonical_order, pairwise_iou

Box = Sequence[float]


def rec_accuracy(
    pred_boxes: Sequence[Sequence[Box] | None], gt_boxes: Sequence[Sequence[Box]], threshold: float = 0.5
) -> float:
    """Referring-expression accuracy, Acc@IoU>=threshold, over a dataset.

    A sample is right when both sides are empty (a correctly rejected absent object), or when the
    prediction has as many boxes as the truth and they pair up one-to-one at IoU >= threshold
    (for the usual one-box REC sample: the box overlaps enough). None (unparsable) is wrong.

    >>> rec_accuracy([[[0, 0, 10, 10]], [], None, [[0, 0, 10, 10], [0, 0, 9, 9]]],
    ...              [[[1, 0, 10, 10]], [], [[0, 0, 5, 5]], [[0, 0, 10, 10]]])
    0.5
    """
    if len(pred_boxes) != len(gt_boxes) or not gt_boxes:
        raise ValueError(f"need one prediction per sample: {len(pred_boxes)} for {len(gt_boxes)} samples")
    right = 0
    for pred, truth in zip(pred_boxes, gt_boxes, strict=True):
        if pred is None or len(pred) != len(truth):
            continue
        if not truth:
            right += 1
            continue
        # A perfect matching on the "overlaps enough" graph: the assignment maximising the number
        # of such pairs pairs them all.
        hits = pairwise_iou(pred, truth) >= threshold
        rows, cols = linear_sum_assignment(hits, maximize=True)
        right += bool(hits[rows, cols].all())
    return right / len(gt_boxes)


def count_accuracy(pred_counts: Sequence[int | None], gt_counts: Sequence[int], tolerance: int = 0) -> float:
    """Fraction of samples whose predicted count is within `tolerance` of the truth (None: wrong).

    >>> count_accuracy([3, 4, None, 0], [3, 3, 2, 0]), count_accuracy([3, 4], [3, 3], tolerance=1)
    (0.5, 1.0)
    """
    if len(pred_counts) != len(gt_counts) or not gt_counts:
        raise ValueError(f"need one prediction per sample: {len(pred_counts)} for {len(gt_counts)} samples")
    right = sum(
        p is not None and abs(p - t) <= tolerance for p, t in zip(pred_counts, gt_counts, strict=True)
    )
    return right / len(gt_counts)


def coco_map(
    predictions: Sequence[Sequence[Detection]], ground_truth: Sequence[Sequence[Truth]]
) -> dict[str, float | None]:
    """{"map", "map50", "map75", "mar100"} of a dataset by pycocotools' COCOeval (bbox); None without
    truth. "mar100" is COCO's AR@100: recall with at most 100 detections per image, averaged over
    IoU 0.5:0.95 and categories.

    Image i holds `predictions[i]` and `ground_truth[i]`; each distinct label is one category.
    Images get their ids in `canonical_order` (by content), since pycocotools ranks detections whose
    scores tie by image id: the result does not depend on the order the images come in.

    >>> result = coco_map([[([0, 0, 10, 10], "cat", 0.9)], []], [[([0, 0, 10, 10], "cat")], [([5, 5, 9, 9], "dog")]])
    >>> {key: round(value, 6) for key, value in result.items()}  # COCO's precision is tp / (tp + fp + eps)
    {'map': 0.5, 'map50': 0.5, 'map75': 0.5, 'mar100': 0.5}
    """
    # Imported here: pycocotools is needed for this one function only.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction lists for {len(ground_truth)} images")
    order = canonical_order(predictions, ground_truth)
    predictions, ground_truth = [predictions[i] for i in order], [ground_truth[i] for i in order]
    labels = {lab for image in ground_truth for _, lab in image} | {
        d[1] for image in predictions for d in image
    }
    category = {label: k for k, label in enumerate(sorted(labels, key=repr), 1)}

    def dataset(images, scored: bool) -> COCO:
        annotations = []
        for image_id, objects in enumerate(images, 1):
            for obj in objects:
                x1, y1, x2, y2 = (float(v) for v in obj[0])
                w, h = x2 - x1, y2 - y1
                ann = {"image_id": image_id, "category_id": category[obj[1]], "bbox": [x1, y1, w, h]}
                ann |= {"area": w * h, "iscrowd": 0, "id": len(annotations) + 1}
                annotations.append(ann | ({"score": float(obj[2])} if scored else {}))
        coco = COCO()  # built in memory: `loadRes` cannot take an empty result list
        coco.dataset = {
            "images": [{"id": i} for i in range(1, len(images) + 1)],
            "categories": [{"id": k, "name": repr(label)} for label, k in category.items()],
            "annotations": annotations,
        }
        coco.createIndex()
        return coco

    with contextlib.redirect_stdout(io.StringIO()):  # COCO and COCOeval print their progress
        evaluation = COCOeval(dataset(ground_truth, False), dataset(predictions, True), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # COCOeval.stats: 0-2 AP, AP50, AP75; 8 AR at maxDets=100, area "all".
    stats = [float(evaluation.stats[i]) for i in (0, 1, 2, 8)]
    keys = ("map", "map50", "map75", "mar100")
    return {key: None if s < 0 else s for key, s in zip(keys, stats, strict=True)}


# ---- benchmark conventions for `vlrl eval` (registered in benchmarks.BENCHMARKS) -------------
# Samples carry the model family's box fields (`ModelAdapter.box_fields`, added by the runner),
# so boxes are scored in original-image pixels whatever convention the model writes.


def _reward(name: str, text: str | None, sample) -> float | None:
    from vlrl.rewards import REWARDS

    fields = {k: [v] for k, v in sample.fields().items()}
    return REWARDS[name]([text or ""], **fields)[0]


def whole_text(text: str, sample) -> str:
    """Box and count parsers read the last <answer> themselves, falling back to the whole text."""
    return text


def rec_score(extracted: str | None, sample) -> float | None:
    """Acc@IoU0.5 for one sample: 1 when the (Hungarian-matched, mean) IoU reaches 0.5; an
    absent object (truth []) is right only when the answer gives no box."""
    iou = _reward("iou", extracted, sample)
    return None if iou is None else float(iou >= 0.5)


def count_score(extracted: str | None, sample) -> float | None:
    return _reward("count", extracted, sample)


def detection_score(extracted: str | None, sample) -> float | None:
    """Per image: VLM-R1's s * mAP (the `ovd_map` reward); the dataset mAP is in the metrics."""
    return _reward("ovd_map", extracted, sample)


def detection_metrics(records) -> dict[str, float | None]:
    """COCO mAP and AR@100 over the whole dataset from each question's first completion (pycocotools).

    The model gives no confidences, so a box's score is its rank in the answer (1 - i / n): the
    first boxes of all images tie, and `coco_map` fixes their order by content, not record order.
    """
    from vlrl.rewards.boxes import parse_boxes, truth_boxes
    from vlrl.rewards.perception import to_pixels

    predictions, truths = [], []
    for record in records:
        f = record.sample.fields()
        pred = parse_boxes(record.texts[0]) or []
        pred = to_pixels(
            pred, f.get("box_convention", "pixels"), f.get("image_size"), f.get("model_image_size")
        )
        n = len(pred)
        predictions.append([(box, label, 1.0 - i / max(n, 1)) for i, (box, label) in enumerate(pred)])
        truths.append(truth_boxes(f.get("boxes", f["answer"])) or [])
    return {f"coco_{k}": v for k, v in coco_map(predictions, truths).items()}
