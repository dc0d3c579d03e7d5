"""Perception rewards: box overlap (REC, multi-object grounding), open-vocabulary detection, counting.

Boxes come from the answer (boxes.py: last `<answer>`, else the whole text) as the model writes
them, and are converted to original-image pixels before scoring with these per-sample fields:

- `box_convention`: "pixels" (the default: already original pixels), or an entry of
  `vlrl.models.boxes.BOX_CONVENTIONS`: "norm1000" (Qwen2-VL, InternVL), "norm999" (DeepSeek-VL2)
  or "resized_abs" (Qwen2.5-VL: pixels of the processor-resized image); the trainer sets it from
  the model adapter.
- `image_size`: [width, height] of the original image (needed unless "pixels").
- `model_image_size`: [width, height] of the image as the model saw it (needed for "resized_abs").

Ground truth is in original pixels: the field `boxes` when a sample has it, else `answer`; one box,
a list of boxes, or a list of `{"bbox": [...], "label": ...}` (see `boxes.truth_boxes`). A truth
that is not boxes (a string answer) makes these rewards None: not applicable. `[]` is a negative
sample: the object is absent and the right answer is "none".

Every box reward charges for redundancy, so repeating a right box never pays (tests hold this):
`iou` / `giou` divide by max(predicted, true) boxes and `ovd_map` multiplies by min(1, true /
predicted), as VLM-R1 (arXiv 2504.07615) does against duplicate detections.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from vlrl.models.boxes import BOX_CONVENTIONS
from vlrl.rewards.boxes import MAX_CHARS, Labelled, average_precision, pairwise_iou, parse_boxes, truth_boxes
from vlrl.rewards.fields import column
from vlrl.rewards.tags import last_answer

CONVENTIONS = ("pixels", *BOX_CONVENTIONS)
_COUNT = re.compile(r"\s*\d{1,9}\s*")
_NUMBERS = re.compile(r"\d+(?:\.\d+)?")


def to_pixels(boxes: list[Labelled], convention: str, image_size, model_image_size) -> list[Labelled]:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown box_convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    if convention == "pixels":
        return boxes
    if image_size is None or (convention == "resized_abs" and model_image_size is None):
        raise ValueError(f"box_convention {convention!r} needs the fields image_size and model_image_size")
    to_pixels = BOX_CONVENTIONS[convention][0]
    model_size = None if model_image_size is None else tuple(model_image_size)
    return [(to_pixels(box, tuple(image_size), model_size), label) for box, label in boxes]


def _pairs(
    completions: list[str], answer: list, fields: dict
) -> list[tuple[list[Labelled] | None, list[Labelled] | None]]:
    """(predicted boxes in original pixels or None if unparsable, true boxes or None) per sample."""
    n = len(completions)
    truths = [
        b if b is not None else a for a, b in zip(answer, column(fields.get("boxes"), n, None), strict=True)
    ]
    conventions = column(fields.get("box_convention"), n, "pixels")
    sizes = column(fields.get("image_size"), n, None)
    model_sizes = column(fields.get("model_image_size"), n, None)
    out = []
    for text, value, convention, size, model_size in zip(
        completions, truths, conventions, sizes, model_sizes, strict=True
    ):
        truth = truth_boxes(value)
        pred = None if truth is None else parse_boxes(text)
        out.append((None if pred is None else to_pixels(pred, convention, size, model_size), truth))
    return out


def _matched(pred: list[Labelled] | None, truth: list[Labelled], pair: Callable) -> float:
    """Hungarian-matched pair scores summed over max(#pred, #true): extra and missing boxes cost."""
    if pred is None:
        return 0.0
    if not truth or not pred:
        return float(not truth and not pred)  # a negative answered "none" is right; else nothing
    scores = pair([b for b, _ in pred], [b for b, _ in truth])  # [P, G]
    rows, cols = linear_sum_assignment(scores, maximize=True)
    return float(scores[rows, cols].sum() / max(len(pred), len(truth)))


def iou_reward(completions: list[str], answer: list, **fields) -> list[float | None]:
    """IoU of predicted and true boxes, one-to-one by the Hungarian algorithm, over max(#pred, #true).

    With one box on each side this is VLM-R1's REC reward IoU(b*, f_rec(o)) (arXiv 2504.07615); with
    several, boxes are paired by maximum total IoU (bipartite matching as in Perception-R1, arXiv
    2504.07954) and the sum divided by the larger count, so a missing box and an extra one each
    cost their share. Labels are ignored. Negatives: "none" for an absent object scores 1.0, any box
    0.0; "none" for a present one 0.0. Unparsable answers 0.0; a non-box truth None.

    >>> iou_reward(["<answer>[0, 0, 10, 10]</answer>", "<answer>[0, 0, 10, 10], [0, 0, 10, 10]</answer>",
    ...             "<answer>none</answer>", "<answer>[0, 0, 5, 10]</answer>"],
    ...            answer=[[[0, 0, 10, 10]], [[0, 0, 10, 10]], [], "3"])
    [1.0, 0.5, 1.0, None]
    """
    pairs = _pairs(completions, answer, fields)
    return [None if truth is None else _matched(pred, truth, pairwise_iou) for pred, truth in pairs]


def _giou01(pred, truth) -> np.ndarray:
    return (1.0 + pairwise_iou(pred, truth, generalized=True)) / 2.0


def giou_reward(completions: list[str], answer: list, **fields) -> list[float | None]:
    """Like `iou`, with GIoU (Rezatofighi et al., CVPR 2019) rescaled to [0, 1] as (1 + GIoU) / 2.

    GIoU keeps a gradient of reward when the box misses the object entirely (it grows as the gap
    shrinks). The rescaling keeps 0 the worst score, so a missing or unparsable answer (0.0) never
    beats a wrong box.

    >>> giou_reward(["<answer>[0, 0, 10, 10]</answer>", "<answer>[10, 0, 20, 10]</answer>",
    ...              "<answer>[30, 0, 40, 10]</answer>"], answer=[[[0, 0, 10, 10]]] * 3)
    [1.0, 0.5, 0.25]
    """
    pairs = _pairs(completions, answer, fields)
    return [None if truth is None else _matched(pred, truth, _giou01) for pred, truth in pairs]


def _category(label: str | None) -> str | None:
    return None if label is None else " ".join(label.lower().split())


def _ovd(pred: list[Labelled] | None, truth: list[Labelled], at: slice) -> float:
    if pred is None:
        return 0.0
    if not truth or not pred:
        return float(not truth and not pred)  # COCO leaves these undefined; as for `iou`
    agnostic = all(label is None for _, label in truth)  # boxes without labels: any label will do
    gt = [(box, None if agnostic else _category(label)) for box, label in truth]
    # The model gives no confidences: earlier boxes rank higher, so the order it writes is its ranking.
    dets = [
        (box, None if agnostic else _category(label), 1.0 - i / len(pred))
        for i, (box, label) in enumerate(pred)
    ]
    ap = average_precision([dets], [gt])
    return min(1.0, len(truth) / len(pred)) * float(ap[at].mean())


def ovd_map_reward(completions: list[str], answer: list, **fields) -> list[float | None]:
    """VLM-R1's open-vocabulary detection reward (arXiv 2504.07615): min(1, L_gt / L_pred) * mAP.

    mAP is COCO's for this one image (mean over IoU 0.5:0.95; `boxes.average_precision`, equal to
    pycocotools), each label a category (compared in lower case with single spaces; a truth
    without labels is class-agnostic). A predicted label that no true box has is its own category,
    which COCO leaves out of the mean: the factor min(1, L_gt / L_pred), L the number of boxes, is
    what makes spurious and duplicate boxes cost. Boxes rank in the order written (the model gives
    no scores). Both sides empty 1.0; one side empty 0.0; unparsable 0.0; non-box truth None.

    >>> truth = [[{"bbox": [0, 0, 10, 10], "label": "cat"}, {"bbox": [20, 0, 30, 10], "label": "dog"}]]
    >>> [round(r, 6) for r in ovd_map_reward(['<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]</answer>'],
    ...                                       answer=truth)]
    [0.5]
    """
    pairs = _pairs(completions, answer, fields)
    return [None if truth is None else _ovd(pred, truth, slice(None)) for pred, truth in pairs]


def ovd_map50_reward(completions: list[str], answer: list, **fields) -> list[float | None]:
    """`ovd_map` with mAP at IoU 0.5 only (the PASCAL VOC threshold), a more lenient signal.

    >>> [round(r, 6) for r in ovd_map50_reward(["<answer>[0, 0, 10, 8], [0, 0, 10, 8]</answer>"],
    ...                                         answer=[[[0, 0, 10, 10]]])]
    [0.5]
    """
    pairs = _pairs(completions, answer, fields)
    return [None if truth is None else _ovd(pred, truth, slice(0, 1)) for pred, truth in pairs]


def _true_count(value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    return int(value) if isinstance(value, str) and _COUNT.fullmatch(value) else None


def predicted_count(completion: str) -> int | None:
    """The count an answer gives: its number of boxes if it lists any, else its last number, else 0
    if it says "none" (boxes.py); None if it has no count or the last number is not a whole one.

    >>> [predicted_count(t) for t in ["<answer>3</answer>", "<answer>I see 2 + 1 = 3 cats</answer>",
    ...                               "<answer>[1, 1, 5, 5], [6, 6, 9, 9]</answer>", "<answer>none</answer>",
    ...                               "<answer>2.5</answer>", "<answer>many</answer>"]]
    [3, 3, 2, 0, None, None]
    """
    boxes = parse_boxes(completion)
    if boxes:
        return len(boxes)
    answer = last_answer(completion)
    text = completion if answer is None else answer
    numbers = _NUMBERS.findall(text) if len(text) <= MAX_CHARS else []
    if numbers:
        value = float(numbers[-1])  # "3.0" is 3; a 5000-digit number is inf, not an integer
        return int(value) if value.is_integer() and value < 1e9 else None
    return 0 if boxes == [] else None


def count_reward(
    completions: list[str], answer: list, count_tolerance: list | None = None, **fields
) -> list[float | None]:
    """1.0 if the predicted count is within `count_tolerance` (absolute, default 0) of the truth.

    R1-V's counting reward (exact match of the count, github.com/Deep-Agent/R1-V) with an optional
    tolerance. The count is read by `predicted_count`. The truth is `answer` when it is a non-negative integer or a string
    of one; anything else (boxes, text) is None, not applicable.

    >>> count_reward(["<answer>3</answer>", "<answer>4</answer>", "<answer>4</answer>", "<answer>red</answer>"],
    ...              answer=["3", 3, "3", "red"], count_tolerance=[0, 0, 1, 0])
    [1.0, 0.0, 1.0, None]
    """
    tolerances = column(count_tolerance, len(completions), 0)
    rewards: list[float | None] = []
    for text, truth, tolerance in zip(completions, answer, tolerances, strict=True):
        target = _true_count(truth)
        if target is None:
            rewards.append(None)
            continue
        count = predicted_count(text)
        rewards.append(float(count is not None and abs(count - target) <= tolerance))
    return rewards
