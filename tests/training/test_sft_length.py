"""How long an SFT run is: train.steps, or sft.epochs when it is set and ends first, stated at start."""

from __future__ import annotations

from helpers_rl import COMMON

from vlrl.config import SFTConfig, load_config
from vlrl.synth import generate_dataset
from vlrl.training.sft import SFTTrainer, sft_length


def sft_cfg(*overrides: str) -> SFTConfig:
    return load_config(None, ["model.path=m", "data.train=t.jsonl", *overrides], schema=SFTConfig)


def test_without_epochs_train_steps_decides_however_many_passes_it_takes():
    cfg = sft_cfg("train.steps=50", "sft.batch_size=8")
    assert cfg.sft.epochs is None  # was 1: a run stopped after one pass, at step 23 of 50 here
    assert sft_length(cfg, 180) == (50, "train.steps (2.2 passes over 180 samples)")


def test_epochs_that_end_before_train_steps_set_the_length_and_say_so():
    # The old sft_tiny.yaml: 50 steps asked for, 2 x 180 / 8 = 45 run, so step_000050 never existed.
    cfg = sft_cfg("train.steps=50", "sft.batch_size=8", "sft.epochs=2")
    assert sft_length(cfg, 180) == (
        45,
        "sft.epochs 2 (2 x 180 samples / sft.batch_size 8), before train.steps 50",
    )
    assert sft_length(cfg, 400) == (50, "train.steps (1.0 passes over 400 samples)")


def test_the_trainer_runs_that_many_steps_and_prints_why_at_start(tiny_models, tmp_path, capsys):
    data = generate_dataset("count_shapes", 20, tmp_path / "data", seed=0, heldout=2)  # 18 to train on
    cfg = load_config(
        None,
        [
            *COMMON,
            f"model.path={tiny_models['qwen2_vl']}",
            f"data.train={data['train']}",
            "train.steps=50",
            "sft.batch_size=8",
            "sft.epochs=2",
            f"train.output_dir={tmp_path / 'sft'}",
        ],
        schema=SFTConfig,
    )
    trainer = SFTTrainer(cfg)
    assert "sft: 5 steps, set by sft.epochs 2 (2 x 18 samples / sft.batch_size 8)" in capsys.readouterr().out
    trainer.train()
    assert trainer.step == 5
    assert [p.name for p in (tmp_path / "sft" / "checkpoints").iterdir()] == ["step_000005"]
