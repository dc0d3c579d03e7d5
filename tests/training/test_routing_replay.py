"""Routing replay in GRPO on the tiny Qwen3-VL-MoE: R3 and R2 runs log moe/route_mismatch, and a
frozen router stays bit-identical through a replayed run while the experts train."""

from __future__ import annotations

import pytest
import torch
from helpers_rl import HAS_E_REWARD, has_e_args, rl_workspace

from vlrl.config import TrainConfig, load_config
from vlrl.models.loading import load_model
from vlrl.training.grpo import GRPOTrainer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_models):
    return rl_workspace(tmp_path_factory.mktemp("replay"), HAS_E_REWARD, tiny_models["qwen3_vl_moe"])


def run(workspace, tmp_path, *overrides):
    args = has_e_args(workspace["model"], workspace["data"]["train"], workspace["reward"], tmp_path)
    cfg = load_config(None, [*args, "train.steps=2", *overrides], schema=TrainConfig)
    trainer = GRPOTrainer(cfg)
    return trainer, trainer.train()


@pytest.mark.parametrize("mode", ["R3", "R2"])
def test_a_replayed_grpo_run_logs_the_route_mismatch(workspace, tmp_path, mode):
    _, history = run(workspace, tmp_path, f"model.routing_replay={mode}", "algo.ppo_epochs=2")
    values = [h["moe/route_mismatch"] for h in history]
    assert len(values) == 2
    if mode == "R3":
        assert values == [0.0, 0.0]  # the experts the update used are the rollout's
    else:
        # the step's own routes; the same weights sampled, so few differ (float noise only)
        assert all(0.0 <= v < 0.05 for v in values)


def test_a_frozen_router_stays_bit_identical_under_replay(workspace, tmp_path):
    before = load_model(workspace["model"]).model.state_dict()
    trainer, _ = run(workspace, tmp_path, "model.routing_replay=R3", "model.freeze=[router]")
    after = trainer.model.state_dict()
    routers = [k for k in after if k.endswith("mlp.gate.weight")]
    experts = [k for k in after if k.endswith("mlp.experts.gate_up_proj")]
    assert routers and experts
    assert all(torch.equal(after[k], before[k]) for k in routers)
    assert any(not torch.equal(after[k], before[k]) for k in experts)


def test_replay_refuses_gradient_checkpointing(workspace, tmp_path):
    args = has_e_args(workspace["model"], workspace["data"]["train"], workspace["reward"], tmp_path)
    with pytest.raises(Exception, match="routing_replay"):
        load_config(
            None, [*args, "model.routing_replay=R3", "model.gradient_checkpointing=true"], schema=TrainConfig
        )
