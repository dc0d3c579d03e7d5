"""Perception conventions in `vlrl eval`: REC Acc@IoU0.5, detection COCO mAP, counting."""

from __future__ import annotations

import pytest

from vlrl.data.sample import Sample
from vlrl.evaluation.benchmarks import get_benchmark
from vlrl.evaluation.records import Record


def _sample(answer, **extra):
    return Sample(id="s", question="q", answer=answer, extra={"box_convention": "pixels", **extra})


def _record(sample, text):
    bench = get_benchmark("detection")
    extracted = bench.extract(text, sample)
    return Record(sample, "all", [text], [extracted], [bench.score(extracted, sample)], [5], ["stop"])


def test_rec_counts_a_hit_at_iou_half_and_absent_objects():
    rec = get_benchmark("rec")
    truth = _sample([[0, 0, 10, 10]])
    assert rec.score(rec.extract("<answer>[[0, 0, 10, 10]]</answer>", truth), truth) == 1.0
    # [0, 0, 10, 20] overlaps 100 of 200 px: IoU 0.5 exactly, a hit.
    assert rec.score("<answer>[[0, 0, 10, 20]]</answer>", truth) == 1.0
    assert rec.score("<answer>[[0, 0, 10, 30]]</answer>", truth) == 0.0  # IoU 1/3
    absent = _sample([])
    assert rec.score("<answer>[]</answer>", absent) == 1.0
    assert rec.score("<answer>[[0, 0, 5, 5]]</answer>", absent) == 0.0
    assert rec.score("<answer>3</answer>", _sample("3")) is None  # not a box question


def test_rec_reads_the_family_convention():
    rec = get_benchmark("rec")
    # Qwen2-VL writes 0-1000: [0, 0, 500, 500] on a 20x20 image is [0, 0, 10, 10] in pixels.
    truth = _sample(
        [[0, 0, 10, 10]], box_convention="norm1000", image_size=[20, 20], model_image_size=[28, 28]
    )
    assert rec.score("<answer>[[0, 0, 500, 500]]</answer>", truth) == 1.0


def test_detection_dataset_map_and_count():
    det = get_benchmark("detection")
    a = _sample([{"bbox": [0, 0, 10, 10], "label": "red circle"}])
    b = _sample([{"bbox": [20, 20, 30, 30], "label": "blue square"}])
    records = [
        _record(a, '<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "red circle"}]</answer>'),
        _record(b, "<answer>[]</answer>"),
    ]
    assert [r.scores[0] for r in records] == pytest.approx([1.0, 0.0])
    metrics = det.metrics(records)
    # Category "red circle": found, AP 1; "blue square": missed, AP 0 -> mean 0.5. Recall alike.
    assert metrics["coco_map50"] == pytest.approx(0.5)
    assert metrics["coco_mar100"] == pytest.approx(0.5)
    count = get_benchmark("count")
    assert count.score("<answer>3</answer>", _sample("3")) == 1.0
    assert count.score("<answer>4</answer>", _sample("3")) == 0.0


def test_detection_metrics_do_not_depend_on_record_order():
    # Boxes carry no scores, so every answer's first box ranks 1.0: tied across images.
    hit = _sample([{"bbox": [0, 0, 10, 10], "label": "cat"}])
    miss = _sample([{"bbox": [20, 20, 30, 30], "label": "cat"}])
    records = [
        _record(hit, '<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]</answer>'),
        _record(miss, '<answer>[{"bbox_2d": [50, 50, 60, 60], "label": "cat"}]</answer>'),
    ]
    det = get_benchmark("detection")
    assert det.metrics(records) == det.metrics(records[::-1])
