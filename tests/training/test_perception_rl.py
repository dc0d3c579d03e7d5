"""Grounding end to end on CPU: a short SFT, then GRPO with the IoU reward raises the mean IoU.

Boxes cross three conventions here: the data holds original pixels, the SFT targets are rendered
in the family's convention (Qwen2-VL: 0-1000), and the reward converts the model's boxes back to
pixels before scoring, so a drop in IoU would also expose a convention mix-up.
"""

from __future__ import annotations

import json

from helpers_rl import COMMON, rewrite_targets, short_sft

from vlrl.config import TrainConfig, load_config
from vlrl.rollout import SamplingParams
from vlrl.synth import generate_dataset
from vlrl.training.grpo import GRPOTrainer


def mean_iou(trainer: GRPOTrainer) -> float:
    samples = [s for s in trainer.train_samples if s.answer][:16]  # positives: IoU is graded there
    prompts = [trainer.adapter.encode(s, trainer.template) for s in samples]
    params = SamplingParams(group_size=8, max_new_tokens=32, temperature=1.0, seed=7)
    groups = trainer.backend.generate(prompts, params)
    return trainer.scorer.score(samples, groups, 32)[0].mean().item()


def test_grpo_on_grounding_raises_mean_iou(tiny_models, tmp_path):
    data = generate_dataset("grounding", 200, tmp_path / "data", seed=0, heldout=8)
    # The answer alone as the SFT target: short enough for a micro model and 32 new tokens.
    rewrite_targets(data["train"], lambda row: f"<answer>{json.dumps(row['answer'])}</answer>")
    common = [*COMMON, f"data.train={data['train']}"]
    checkpoint = short_sft(tiny_models["qwen2_vl"], data["train"], tmp_path / "sft", 150, "train.lr=5e-3")
    trainer = GRPOTrainer(
        load_config(
            None,
            [
                *common,
                f"model.path={checkpoint}",
                "reward.functions=[iou]",
                "rollout.group_size=8",
                "rollout.prompts_per_step=8",
                "rollout.max_new_tokens=32",
                "train.steps=30",
                "train.lr=1e-3",
                "train.lr_schedule=constant",
                f"train.output_dir={tmp_path / 'rl'}",
            ],
            schema=TrainConfig,
        )
    )
    before = mean_iou(trainer)
    trainer.train()
    after = mean_iou(trainer)
    # The box distribution moves onto the objects: measured 0.022 -> 0.061, and 0.013 -> 0.033 with
    # the packages pip resolved on 2026-12-07 (the same code: the cold start lands elsewhere).
    assert after > before + 0.015 and after > 2 * before, (before, after)
