"""SFT's early stop (`sft.stop_at_acc`): the first evaluation at the target ends the run, saved."""

from __future__ import annotations

import json
from pathlib import Path

from helpers_rl import COMMON

from vlrl.config import SFTConfig, load_config
from vlrl.synth import generate_dataset
from vlrl.training.sft import SFTTrainer


def constant_answer_trainer(model: Path, tmp_path: Path, *overrides: str) -> SFTTrainer:
    """SFT where every answer is 3 (a micro model writes it within tens of steps, whatever it sees),
    evaluated every 2 steps, stopping at 50% accuracy."""
    data = generate_dataset("count_shapes", 72, tmp_path / "data", seed=0, heldout=8)
    for path in data.values():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text(
            "".join(json.dumps(r | {"answer": "3", "solution": "<answer>3</answer>"}) + "\n" for r in rows)
        )
    cfg = load_config(
        None,
        [
            *COMMON,
            f"model.path={model}",
            f"data.train={data['train']}",
            f"data.eval={{probe: {data['heldout']}}}",
            "train.steps=300",
            "train.lr=5e-3",
            "train.eval_every=2",
            f"train.output_dir={tmp_path / 'sft'}",
            "sft.batch_size=16",
            "sft.epochs=100",
            "sft.eval_max_new_tokens=16",
            "sft.stop_at_acc=0.5",
            *overrides,
        ],
        schema=SFTConfig,
    )
    return SFTTrainer(cfg)


def constant_answer_sft(model: Path, tmp_path: Path, *overrides: str) -> tuple[SFTTrainer, list[dict]]:
    """`constant_answer_trainer`, trained; returns the trainer and its history."""
    trainer = constant_answer_trainer(model, tmp_path, *overrides)
    return trainer, trainer.train()


def test_stop_at_acc_ends_the_run_at_the_first_evaluation_that_reaches_it(tiny_models, tmp_path):
    trainer, history = constant_answer_sft(tiny_models["qwen2_vl"], tmp_path)
    evals = [h["eval/probe/acc"] for h in history if "eval/probe/acc" in h]
    assert trainer.step < 300 and trainer.step % 2 == 0 and history[-1]["step"] == trainer.step
    # How many evaluations come first depends on the machine (one CI machine was at 100% by step 2);
    # that a run below the target goes on is pinned by the tests around this one.
    assert evals[-1] >= 0.5 and all(acc < 0.5 for acc in evals[:-1]), evals
    out = tmp_path / "sft"
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step_{trainer.step:06d}"]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == trainer.step and logged[-1]["eval/probe/acc"] >= 0.5


def test_stop_is_not_checked_before_stop_from_step(tiny_models, tmp_path):
    trainer, history = constant_answer_sft(tiny_models["qwen2_vl"], tmp_path, "sft.stop_from_step=12")
    evals = {h["step"]: h["eval/probe/acc"] for h in history if "eval/probe/acc" in h}
    assert any(acc >= 0.5 for step, acc in evals.items() if step < 12), evals  # would have stopped
    assert trainer.step == min(step for step, acc in evals.items() if step >= 12 and acc >= 0.5)


def test_the_target_is_reached_only_when_every_eval_set_is_at_it(tiny_models, tmp_path):
    trainer = constant_answer_trainer(tiny_models["qwen2_vl"], tmp_path, "sft.stop_from_step=4")
    trainer.step = 4
    assert trainer.reached_target({"loss": 0.1}) is None  # no evaluation at this step
    assert trainer.reached_target({"eval/probe/acc": 0.49}) is None
    assert trainer.reached_target({"eval/probe/acc": 0.5}) == "eval/probe/acc 0.500 >= sft.stop_at_acc 0.5"
    two_sets = {"eval/a/acc": 0.9, "eval/b/acc": 0.3, "eval/b/format": 1.0}
    assert trainer.reached_target(two_sets) is None
    assert trainer.reached_target(two_sets | {"eval/b/acc": 0.6}) is not None
    trainer.step = 3
    assert trainer.reached_target({"eval/probe/acc": 1.0}) is None  # before sft.stop_from_step
