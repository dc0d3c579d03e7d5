"""In-training evaluation: which convention scores each data.eval set, and the flips between
two evaluations."""

from __future__ import annotations

import json

import pytest
import torch

from vlrl.config import TrainConfig, load_config
from vlrl.data.sample import Sample
from vlrl.evaluation.intraining import eval_benchmark, flips
from vlrl.rollout.base import Completion
from vlrl.synth import generate_dataset
from vlrl.training.grpo import GRPOTrainer

BOXES = [Sample("g1", "Give the box of the red circle.", [[10, 10, 40, 40]]), Sample("g2", "...", [])]
OBJECTS = [Sample("d1", "Detect all shapes.", [{"bbox": [1, 2, 30, 40], "label": "red circle"}])]
TEXT = [Sample("t1", "How many circles?", "3")]


def test_box_answers_are_scored_by_a_box_convention_and_text_by_the_one_asked_for():
    assert eval_benchmark(BOXES, "math_verify", "g") == "rec"  # plain boxes, [] included: Acc@IoU0.5
    assert eval_benchmark(OBJECTS, "math_verify", "d") == "detection"  # labelled objects
    assert eval_benchmark(OBJECTS, "rec", "d") == "rec"  # a box convention asked for is kept
    assert eval_benchmark(TEXT, "mathvista", "t") == "mathvista"


def test_a_set_no_convention_can_score_is_refused_naming_it():
    with pytest.raises(
        ValueError,
        match=r"^data.eval set 'mix' mixes box answers \(sample 'g1'\) and text answers \(sample 't1'\)",
    ):
        eval_benchmark([*BOXES, *TEXT], "math_verify", "mix")
    with pytest.raises(
        ValueError, match=r"^data.eval set 't': train.eval_benchmark=rec scores boxes, but sample 't1'"
    ):
        eval_benchmark(TEXT, "rec", "t")


def test_flips_count_only_questions_scored_both_times():
    before = [
        {"id": "a", "correct": False},  # -> right
        {"id": "b", "correct": True},  # -> wrong
        {"id": "c", "correct": True},  # stays right
        {"id": "d", "correct": False},  # stays wrong
        {"id": "e", "correct": None},  # unscored before: not compared
    ]
    now = [
        {"id": k, "correct": c} for k, c in zip("abcdef", [True, False, True, False, True, True], strict=True)
    ]
    # 4 questions compared (a-d; e was unscored, f is new): 1 / 4 each way.
    assert flips(before, now) == {"flip_to_correct": 0.25, "flip_to_wrong": 0.25}
    assert flips([], now) == {}  # no previous evaluation: no point on the curve rather than a 0


class TruthBackend:
    """Answers each prompt with its sample's true boxes in the model's convention, then, from the
    second call on, with no box at all: a perfect policy that forgets."""

    def __init__(self, adapter, samples):
        self.answers = [adapter.render_target(s, f"<answer>{json.dumps(s.answer)}</answer>") for s in samples]
        self.calls = 0

    def generate(self, prompts, params):
        texts = self.answers if self.calls == 0 else ["<answer>[]</answer>"] * len(prompts)
        self.calls += 1
        return [[Completion(torch.tensor([1]), torch.zeros(1), t, "stop")] for t in texts[: len(prompts)]]


def test_a_grounding_eval_set_is_scored_by_iou_with_flips(tiny_models, tmp_path):
    data = generate_dataset(
        "grounding", 12, tmp_path / "data", seed=1, heldout=6
    )  # 2 of 6 held out are absent
    cfg = load_config(
        None,
        [
            f"model.path={tiny_models['qwen2_vl']}",
            f"data.train={data['train']}",
            f"data.eval={{boxes: {data['heldout']}}}",
            "reward.functions=[iou]",
            "train.eval_every=1",
            "train.device=cpu",
            f"train.output_dir={tmp_path / 'run'}",
            "logging.progress=false",
        ],
        schema=TrainConfig,
    )
    trainer = GRPOTrainer(cfg)
    assert trainer.eval_benchmarks == {"boxes": "rec"}
    samples = trainer.eval_sets["boxes"]
    absent = sum(s.answer == [] for s in samples)
    assert 0 < absent < len(samples)  # both kinds in the set: a [] answer is right only once
    backend = TruthBackend(trainer.adapter, samples)
    first = trainer.evaluate_sets(backend, 16, [])
    assert first["eval/boxes/acc"] == 1.0  # math_verify scored none of these: acc 0
    assert "eval/boxes/flip_to_wrong" not in first
    second = trainer.evaluate_sets(backend, 16, [])
    # Now only the absent objects are right: the others flipped to wrong.
    assert second["eval/boxes/acc"] == pytest.approx(absent / len(samples))
    assert second["eval/boxes/flip_to_wrong"] == pytest.approx(1 - absent / len(samples))
    assert second["eval/boxes/flip_to_correct"] == 0.0


def test_a_mixed_eval_set_is_refused_before_training(tiny_models, tmp_path):
    # One folder for both tasks (their images have distinct names), so relative image paths hold.
    boxes = generate_dataset("grounding", 4, tmp_path, seed=0, heldout=2)["heldout"].read_text()
    counting = generate_dataset("counting", 4, tmp_path, seed=0, heldout=2)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(boxes + counting["heldout"].read_text())
    cfg = load_config(
        None,
        [
            f"model.path={tiny_models['qwen2_vl']}",
            f"data.train={counting['train']}",
            f"data.eval={{mixed: {mixed}}}",
            "train.device=cpu",
            f"train.output_dir={tmp_path / 'run'}",
        ],
        schema=TrainConfig,
    )
    with pytest.raises(ValueError, match=r"^data.eval set 'mixed' mixes box answers"):
        GRPOTrainer(cfg)
