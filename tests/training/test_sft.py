"""SFTTrainer's early stop: `stop` sees each evaluation and ends training there, with a checkpoint."""

from __future__ import annotations

import json

from helpers_rl import COMMON

from vlrl.config import SFTConfig, load_config
from vlrl.synth import generate_dataset
from vlrl.training.sft import SFTTrainer


def test_stop_ends_training_at_the_evaluation_that_asks_for_it(tiny_models, tmp_path):
    data = generate_dataset("count_shapes", 24, tmp_path / "data", seed=0, heldout=4)
    cfg = load_config(
        None,
        [
            *COMMON,
            f"model.path={tiny_models['qwen2_vl']}",
            f"data.train={data['train']}",
            f"data.eval={{probe: {data['heldout']}}}",
            "train.steps=10",
            "train.eval_every=2",
            "sft.batch_size=4",
            "sft.epochs=100",
            "sft.eval_max_new_tokens=8",
            f"train.output_dir={tmp_path / 'sft'}",
        ],
        schema=SFTConfig,
    )
    seen = []

    def stop(metrics: dict) -> bool:
        seen.append(metrics)
        return len(seen) == 2

    trainer = SFTTrainer(cfg)
    history = trainer.train(stop=stop)

    assert trainer.step == 4 and len(history) == 4
    assert all("eval/probe/acc" in m for m in seen)
    assert [p.name for p in (tmp_path / "sft" / "checkpoints").iterdir()] == ["step_000004"]
    logged = [
        json.loads(line)["step"] for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged[-1] == 4


def test_without_stop_training_runs_all_steps(tiny_models, tmp_path):
    data = generate_dataset("count_shapes", 12, tmp_path / "data", seed=0, heldout=2)
    cfg = load_config(
        None,
        [
            *COMMON,
            f"model.path={tiny_models['qwen2_vl']}",
            f"data.train={data['train']}",
            "train.steps=3",
            "sft.batch_size=4",
            f"train.output_dir={tmp_path / 'sft'}",
        ],
        schema=SFTConfig,
    )
    trainer = SFTTrainer(cfg)
    trainer.train()
    assert trainer.step == 3
    assert (tmp_path / "sft" / "checkpoints" / "step_000003").is_dir()
