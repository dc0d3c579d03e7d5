"""The Python API: `vlrl.load_config` + `vlrl.GRPOTrainer` / `vlrl.SFTTrainer` run steps and return
the metrics they log to metrics.jsonl."""

from __future__ import annotations

import pytest

import vlrl
from vlrl.synth import generate_dataset

COMMON = ["data.system_prompt=Answer.", "train.steps=2", "train.device=cpu", "logging.progress=false"]
# The tiniest RL run that still samples, scores and updates: 2 prompts x 2 answers of 4 tokens.
SMALL_RL = [
    *COMMON,
    "data.template=answer_only",
    "rollout.group_size=2",
    "rollout.prompts_per_step=2",
    "rollout.max_new_tokens=4",
]


@pytest.fixture
def data(tmp_path):
    return generate_dataset("count_shapes", 8, tmp_path / "data", seed=0, heldout=2)


def test_a_yaml_file_with_overrides_runs_two_grpo_steps_whose_metrics_are_logged(tiny_models, data, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {tiny_models['qwen2_vl']}}}\ndata: {{train: {data['train']}}}\n")
    out = tmp_path / "run"
    cfg = vlrl.load_config(config, [*SMALL_RL, f"train.output_dir={out}"])
    history = vlrl.GRPOTrainer(cfg).train()
    assert [h["step"] for h in history] == [1, 2]
    assert {"reward/total/mean", "loss", "grad_norm", "response_length/mean"} <= set(history[0])
    assert vlrl.read_metrics(out / "metrics.jsonl") == history


def test_a_config_built_in_code_runs_sft(tiny_models, data, tmp_path):
    out = tmp_path / "sft"
    overrides = [
        f"model.path={tiny_models['qwen2_vl']}",
        f"data.train={data['train']}",
        f"train.output_dir={out}",
    ]
    cfg = vlrl.load_config(None, [*overrides, *COMMON, "sft.batch_size=2"], schema=vlrl.SFTConfig)
    history = vlrl.SFTTrainer(cfg).train()
    assert [h["step"] for h in history] == [1, 2] and all(h["loss"] > 0 for h in history)
    assert vlrl.read_metrics(out / "metrics.jsonl") == history


def test_the_api_names_are_the_library_objects():
    from vlrl.config import load_config
    from vlrl.training.grpo import GRPOTrainer

    assert vlrl.load_config is load_config and vlrl.GRPOTrainer is GRPOTrainer
    assert {"GRPOTrainer", "SFTTrainer", "load_config", "read_metrics"} <= set(vlrl.__all__) & set(dir(vlrl))
    with pytest.raises(AttributeError, match="module 'vlrl' has no attribute 'GRPOTrainr'"):
        vlrl.GRPOTrainr  # noqa: B018
