"""Boxes for the perception rewards (perception.py): reading them from text, and measuring them.

Boxes are `[x1, y1, x2, y2]` with x2, y2 exclusive: area (x2 - x1) * (y2 - y1), as in COCO.

Reading. `parse_boxes` reads the content of the last `<answer>...</answer>`, or the whole
completion when there is none (so a model without the R1 layout can still be scored; boxes it
mentions while reasoning then count as predictions too). It finds, left to right, boxes written as

- `[x1, y1, x2, y2]` (or with round brackets), alone or in lists: `[[...], [...]]`;
- Qwen2-VL points `(x1,y1),(x2,y2)`, optionally `<|box_start|>...<|box_end|>` and preceded by
  `<|object_ref_start|>label<|object_ref_end|>`; InternVL's `<ref>label</ref><box>[[...]]</box>`,
  DeepSeek-VL2's `<|ref|>label<|/ref|><|det|>[[...]]<|/det|>`;
- flat objects `{"bbox_2d": [...], "label": "cat"}` (any key naming the box, `'` or `"` quotes,
  Qwen2.5-VL's grounding JSON), alone or in lists,

with any whitespace, code fences or text around them. It returns `[(box, label | None), ...]`,
`[]` when the answer says there is nothing (`[]`, "none", "no objects", ...), and None when it is
malformed: no box and no such statement. None is a parse failure, which every reward scores 0.

Model text is untrusted: an answer over MAX_CHARS characters or with more than MAX_BOXES boxes is
a failure, and the one scanning expression runs in linear time (each alternative starts at a
bracket, brace or `<`, and the object body is bounded). A box with x2 <= x1 or y2 <= y1 is dropped,
as is one with a coordinate beyond MAX_COORD: it can overlap nothing, and leaving it out keeps
IoU free of divisions by zero. When every box written is dropped the answer is a failure, not an
empty list, so a degenerate box never passes for "there is none".

Measuring. `pairwise_iou` (IoU, GIoU), and `average_precision` and `average_recall`, a short
numpy re-implementation of pycocotools' COCOeval for boxes (greedy matching by score, 101-point
interpolated precision, area range "all", at most 100 detections per image and category), which
the per-sample `ovd_map` reward uses: fast and silent. Where scores tie across images, COCO ranks
the tied detections by image (pycocotools: by image id), so its mAP depends on the order images
come in; both implementations here first put the images in one order by content
(`canonical_order`), which makes the result independent of it. It agrees with pycocotools to 1e-6 on randomised datasets
(tests/evaluation/test_perception_metrics.py). One known difference: COCO's area range "all" stops
at 1e10 px^2 (a 100000-pixel square) and pycocotools ignores larger boxes; here they count. Dataset
metrics, pycocotools' own mAP among them, are in `vlrl.evaluation.perception`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from vlrl.rewards.tags import last_answer

MAX_CHARS = 20_000
MAX_BOXES = 100
MAX_COORD = 1e5  # pixels or 0-1000 units; no image is that large

Box = list[float]
Labelled = tuple[Box, str | None]
Detection = tuple[Sequence[float], Hashable, float]  # box, label (category), score
Truth = tuple[Sequence[float], Hashable]  # box, label (category)

_NUM = r"-?\d+(?:\.\d+)?"
_SEP = r"\s*,\s*"
_FOUR = rf"[\[(]\s*{_NUM}{_SEP}{_NUM}{_SEP}{_NUM}{_SEP}{_NUM}\s*[\])]"
_PAIR = rf"\(\s*{_NUM}{_SEP}{_NUM}\s*\)\s*,?\s*\(\s*{_NUM}{_SEP}{_NUM}\s*\)"
_REF = (
    r"(?:(?:<\|object_ref_start\|>|<ref>|<\|ref\|>)(?P<ref>[^<>]{0,200})"
    r"(?:<\|object_ref_end\|>|</ref>|<\|/ref\|>)\s*)?"
)
_OPEN = r"(?:(?:<\|box_start\|>|<box>|<\|det\|>)\s*\[?\s*)?"
_SCAN = re.compile(rf"\{{(?P<object>[^{{}}]{{0,2000}})\}}|{_REF}{_OPEN}(?P<coords>{_FOUR}|{_PAIR})")
_COORDS = re.compile(rf"{_FOUR}|{_PAIR}")
_NUMBER = re.compile(_NUM)
_LABEL = re.compile(r"""["']?label["']?\s*:\s*(?:"([^"]{0,200})"|'([^']{0,200})')""")
_EMPTY = re.compile(
    r"\[\s*\]|\b(?:none|null|nothing|no (?:such )?(?:objects?|boxe?s?|matche?s?|shapes?)|"
    r"not (?:present|found|visible|in the image)|there is no|there are no)\b",
    re.IGNORECASE,
)


def _box(coords: str) -> Box | None:
    """The four numbers of a coordinate match, or None for a degenerate or out-of-range box."""
    x1, y1, x2, y2 = (float(v) for v in _NUMBER.findall(coords))
    if not all(math.isfinite(v) and abs(v) <= MAX_COORD for v in (x1, y1, x2, y2)):
        return None
    return [x1, y1, x2, y2] if x2 > x1 and y2 > y1 else None


def parse_boxes(completion: str) -> list[Labelled] | None:
    """Boxes and labels in the answer, in order of appearance; [] for "none"; None if malformed.

    >>> parse_boxes('<answer>```json\\n[{"bbox_2d": [10, 20, 50, 60], "label": "cat"}]\\n```</answer>')
    [([10.0, 20.0, 50.0, 60.0], 'cat')]
    >>> parse_boxes("<|object_ref_start|>dog<|object_ref_end|><|box_start|>(1,2),(30,40)<|box_end|>")
    [([1.0, 2.0, 30.0, 40.0], 'dog')]
    >>> parse_boxes("<answer>[]</answer>"), parse_boxes("<answer>No objects.</answer>")
    ([], [])
    >>> parse_boxes("<answer>[1, 2, 3]</answer>") is None, parse_boxes("[5, 5, 5, 9]") is None
    (True, True)
    """
    answer = last_answer(completion)
    text = completion if answer is None else answer
    if len(text) > MAX_CHARS:
        return None
    found: list[Labelled] = []
    written = 0
    for match in _SCAN.finditer(text):
        if match["object"] is not None:
            coords = _COORDS.search(match["object"])
            if coords is None:
                continue  # an object that names no box: not a detection
            label = _LABEL.search(match["object"])
            name = None if label is None else label[1] if label[1] is not None else label[2]
            coords = coords[0]
        else:
            coords, name = match["coords"], match["ref"]
        written += 1
        if written > MAX_BOXES:
            return None
        box = _box(coords)
        if box is not None:
            found.append((box, None if name is None else name.strip()))
    if found:
        return found
    return [] if written == 0 and _EMPTY.search(text) else None


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _truth_box(value: Any) -> Labelled | None:
    if isinstance(value, list | tuple) and len(value) == 4 and all(_number(v) for v in value):
        return [float(v) for v in value], None
    if isinstance(value, dict):
        box = next((value[k] for k in ("bbox_2d", "bbox", "box") if k in value), None)
        parsed = _truth_box(box) if isinstance(box, list | tuple) else None
        if parsed is not None:
            label = value.get("label")
            return parsed[0], None if label is None else str(label).strip()
    return None


def truth_boxes(value: Any) -> list[Labelled] | None:
    """Ground-truth boxes of a data field, or None when the value is not boxes (not applicable).

    Accepts one box `[x1, y1, x2, y2]`, a list of them, or a list of `{"bbox" | "bbox_2d" | "box":
    [...], "label": ...}`; `[]` means no object. Strings (even JSON ones) are not boxes.

    >>> truth_boxes([[1, 2, 3, 4]]), truth_boxes([{"bbox": [1, 2, 3, 4], "label": "cat"}])
    ([([1.0, 2.0, 3.0, 4.0], None)], [([1.0, 2.0, 3.0, 4.0], 'cat')])
    >>> truth_boxes([]), truth_boxes("3"), truth_boxes([1, 2, 3, 4])
    ([], None, [([1.0, 2.0, 3.0, 4.0], None)])
    """
    if not isinstance(value, list | tuple):
        return None
    single = _truth_box(value)
    if single is not None:
        return [single]
    boxes = [_truth_box(v) for v in value]
    return None if any(b is None for b in boxes) else boxes


# The exact arrays of pycocotools' `Params.setDetParams`: the same floats give the same ties.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = 100


def pairwise_iou(
    a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], generalized: bool = False
) -> np.ndarray:
    """[A, B] IoU, or GIoU (Rezatofighi et al., CVPR 2019, arXiv 1902.09630), of xyxy boxes.

    GIoU = IoU - (C - U) / C with C the area of the smallest box enclosing both and U the union:
    in [-1, 1], and still informative (negative, growing with the gap) when boxes do not overlap.

    >>> pairwise_iou([[0, 0, 2, 2]], [[1, 0, 3, 2], [4, 0, 6, 2]], generalized=True).round(3).tolist()
    [[0.333, -0.333]]
    """
    a = np.asarray(a, dtype=float).reshape(-1, 4)[:, None, :]  # [A, 1, 4]
    b = np.asarray(b, dtype=float).reshape(-1, 4)[None, :, :]  # [1, B, 4]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    union = area_a + area_b - inter
    iou = inter / union
    if not generalized:
        return iou
    cw = np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0])
    ch = np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1])
    return iou - (cw * ch - union) / (cw * ch)


def _coco_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """[D, G] IoU computed as pycocotools' C `bbIou` does, from (x, y, w, h), so floats match."""
    dt, gt = dt[:, None, :], gt[None, :, :]
    w = np.minimum(dt[..., 2] + dt[..., 0], gt[..., 2] + gt[..., 0]) - np.maximum(dt[..., 0], gt[..., 0])
    h = np.minimum(dt[..., 3] + dt[..., 1], gt[..., 3] + gt[..., 1]) - np.maximum(dt[..., 1], gt[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = dt[..., 2] * dt[..., 3] + gt[..., 2] * gt[..., 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def _xywh(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    xyxy = np.asarray(boxes, dtype=float).reshape(-1, 4)
    return np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)


def _match(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """[T, D] whether each detection (sorted by score) is a true positive at each IoU threshold.

    COCO's greedy rule: in score order, a detection takes the still-free truth it overlaps most,
    if that IoU reaches the threshold; among equal overlaps the later truth (pycocotools' `>=`).
    """
    ious = _coco_iou(dt, gt)  # [D, G]
    taken = np.zeros((len(IOU_THRESHOLDS), len(gt)), dtype=bool)  # [T, G]
    matched = np.zeros((len(IOU_THRESHOLDS), len(dt)), dtype=bool)  # [T, D]
    if not len(gt):
        return matched  # nothing to find: every detection is a false positive
    for d in range(len(dt)):
        free = np.where(taken, -np.inf, ious[d][None, :])  # [T, G]
        best = len(gt) - 1 - np.argmax(free[:, ::-1], axis=1)  # last index of the maximum
        hit = free[np.arange(len(best)), best] >= IOU_THRESHOLDS
        taken[hit, best[hit]] = True
        matched[hit, d] = True
    return matched


def _category_curves(scores: np.ndarray, matched: np.ndarray, n_truth: int) -> tuple[np.ndarray, np.ndarray]:
    """([T] mean interpolated precision at RECALL_POINTS, [T] recall reached) of one category.

    As pycocotools' `accumulate`: recall is the last point of the curve, 0 without detections.
    """
    order = np.argsort(-scores, kind="mergesort")  # stable, as pycocotools
    tp = np.cumsum(matched[:, order], axis=1, dtype=float)  # [T, D]
    fp = np.cumsum(~matched[:, order], axis=1, dtype=float)
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    reached_recall = np.zeros(len(IOU_THRESHOLDS))
    for t in range(len(IOU_THRESHOLDS)):
        recall = tp[t] / n_truth
        reached_recall[t] = recall[-1] if len(recall) else 0.0
        # Precision made non-increasing in recall, then read at the first point reaching each level.
        envelope = np.maximum.accumulate((tp[t] / (tp[t] + fp[t] + np.spacing(1)))[::-1])[::-1]
        at = np.searchsorted(recall, RECALL_POINTS, side="left")
        reached = at < len(recall)
        precision[t, reached] = envelope[at[reached]]
    return precision.mean(axis=1), reached_recall


def canonical_order(predictions: Sequence[Sequence], ground_truth: Sequence[Sequence]) -> list[int]:
    """Image indices sorted by the images' content (truth, then detections): a fixed order for
    detections whose scores tie across images, whatever order the images come in.

    >>> canonical_order([[], []], [[([5, 5, 9, 9], "b")], [([0, 0, 4, 4], "a")]])
    [1, 0]
    """
    return sorted(range(len(ground_truth)), key=lambda i: repr((ground_truth[i], predictions[i])))


def _evaluate(
    predictions: Sequence[Sequence[Detection]], ground_truth: Sequence[Sequence[Truth]]
) -> tuple[np.ndarray, np.ndarray] | None:
    """([K, T] AP, [K, T] AR) per category with truth, images in `canonical_order`; None if none."""
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction lists for {len(ground_truth)} images")
    order = canonical_order(predictions, ground_truth)
    predictions, ground_truth = [predictions[i] for i in order], [ground_truth[i] for i in order]
    # Sorted so that the mean over categories adds up in the same order on every run.
    labels = sorted({label for image in ground_truth for _, label in image}, key=repr)
    if not labels:
        return None
    curves = []
    for label in labels:
        scores, matched, n_truth = [], [], 0
        for dets, truths in zip(predictions, ground_truth, strict=True):
            dets = [d for d in dets if d[1] == label]
            ranked = np.argsort([-d[2] for d in dets], kind="mergesort")[:MAX_DETECTIONS]
            dt = _xywh([dets[i][0] for i in ranked])
            gt = _xywh([box for box, lab in truths if lab == label])
            scores.append(np.asarray([dets[i][2] for i in ranked], dtype=float))
            matched.append(_match(dt, gt))
            n_truth += len(gt)
        curves.append(_category_curves(np.concatenate(scores), np.hstack(matched), n_truth))
    return np.array([c[0] for c in curves]), np.array([c[1] for c in curves])


def average_precision(
    predictions: Sequence[Sequence[Detection]], ground_truth: Sequence[Sequence[Truth]]
) -> np.ndarray | None:
    """[T] COCO AP at each of IOU_THRESHOLDS, averaged over categories; None without any truth.

    `predictions[i]` and `ground_truth[i]` belong to image i; labels are categories (any hashable).
    Categories without truth anywhere are left out, as in COCO, so a detection with an unknown label
    costs nothing here. COCO's mAP is the mean of the result, mAP@0.5 its first entry, mAP@0.75 its
    sixth.

    >>> truth = [[([0, 0, 10, 10], "cat"), ([20, 0, 30, 10], "cat")]]
    >>> round(float(average_precision([[([0, 0, 10, 10], "cat", 0.9)]], truth)[0]), 3)  # 51 of 101 points
    0.505
    """
    result = _evaluate(predictions, ground_truth)
    return None if result is None else result[0].mean(axis=0)


def average_recall(
    predictions: Sequence[Sequence[Detection]], ground_truth: Sequence[Sequence[Truth]]
) -> np.ndarray | None:
    """[T] COCO recall at each of IOU_THRESHOLDS with at most MAX_DETECTIONS per image, averaged
    over categories; None without any truth. Its mean is COCO's AR@100.

    >>> truth = [[([0, 0, 10, 10], "cat"), ([20, 0, 30, 10], "cat")]]
    >>> float(average_recall([[([0, 0, 10, 10], "cat", 0.9)]], truth).mean())  # 1 of 2 found
    0.5
    """
    result = _evaluate(predictions, ground_truth)
    return None if result is None else result[1].mean(axis=0)
