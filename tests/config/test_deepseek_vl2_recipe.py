"""The MoERL-Vision recipe configs: every group they freeze or LoRA-target exists in the DeepSeek-VL2
family (the checks a run makes when the checkpoint loads, here on the tiny checkpoints of the same
layout: -tiny's standard attention, -small's MLA), -small's LoRA reaches the routed experts, and
each config is the recipe: caption-first template and its format reward, the held-out split
evaluated during training, frozen routers with routing replay (R2 where SGLang returns no routes),
ScienceQA through an SGLang server."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlrl.config import TrainConfig, load_config
from vlrl.evaluation.intraining import FORMAT_REWARDS
from vlrl.models.loading import load_model
from vlrl.training.setup import check_model_groups, lora_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
REAL = {"grpo_deepseek_vl2_tiny.yaml": "deepseek_vl2", "grpo_deepseek_vl2_small.yaml": "deepseek_vl2_mla"}
RECIPE = [*REAL, "grpo_deepseek_vl2_caption_tiny.yaml"]


def config(name: str) -> TrainConfig:
    return load_config(CONFIGS / name, schema=TrainConfig)


@pytest.mark.parametrize(("name", "family"), REAL.items())
def test_real_checkpoint_configs_fit_the_family(tiny_models, name, family):
    cfg = config(name)
    lm = load_model(tiny_models[family])
    assert lm.adapter.family == family
    check_model_groups(cfg.model, lm.adapter)
    assert cfg.model.freeze == ["vision", "router"]
    if cfg.model.lora.enabled:
        lora = lora_config(cfg.model, lm.model, lm.adapter)
        # the routed experts are fused parameters: LoRA reaches them through target_parameters
        assert lora.target_parameters and all("experts" in p for p in lora.target_parameters)
        assert lora.target_modules


@pytest.mark.parametrize("name", RECIPE)
def test_each_config_is_the_caption_first_recipe(name):
    cfg = config(name)
    assert cfg.data.template == "caption_think_answer"
    assert cfg.reward.functions[:2] == [FORMAT_REWARDS["caption_think_answer"], "accuracy"]
    assert cfg.data.eval and 0 < cfg.train.eval_every <= cfg.train.steps
    assert "router" in cfg.model.freeze and cfg.model.routing_replay != "off"


@pytest.mark.parametrize("name", REAL)
def test_real_configs_read_scienceqa_and_sample_from_sglang(name):
    cfg = config(name)
    assert cfg.data.format == "scienceqa" and list(cfg.data.eval) == ["val"]
    assert cfg.rollout.backend == "server" and cfg.rollout.server.kind == "sglang"
    assert cfg.rollout.server.sync_dir  # the server reloads each update's weights from there
    # SGLang returns no routes for -tiny (its model's routers report no layer): replay from the update
    assert cfg.model.routing_replay == {"deepseek_vl2": "R2", "deepseek_vl2_mla": "R3"}[REAL[name]]
