"""MoE-specific training settings end to end: the router load-balancing loss in RL and SFT."""

from __future__ import annotations

import json

import pytest
from helpers_rl import HAS_E_REWARD, has_e_args, rl_workspace, short_sft

from vlrl.config import TrainConfig, load_config
from vlrl.training.grpo import GRPOTrainer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_models):
    return rl_workspace(tmp_path_factory.mktemp("moe"), HAS_E_REWARD, tiny_models["qwen3_vl_moe"])


@pytest.mark.parametrize("coef", [0.0, 0.05])
def test_grpo_adds_the_router_loss_only_with_a_coefficient(workspace, tmp_path, coef):
    args = has_e_args(workspace["model"], workspace["data"]["train"], workspace["reward"], tmp_path)
    cfg = load_config(
        None, [*args, "train.steps=2", f"model.router_aux_loss_coef={coef}"], schema=TrainConfig
    )
    history = GRPOTrainer(cfg).train()
    if coef:
        # transformers' Switch loss E * sum_i f_i P_i, with f summing to top_k (2 of 4 experts):
        # top_k for uniform routing, at most E * top_k.
        assert all(0.0 < h["router_aux_loss"] <= 8.0 for h in history)
    else:
        assert all("router_aux_loss" not in h for h in history)


def test_sft_adds_the_router_loss_with_a_coefficient(workspace, tmp_path):
    short_sft(workspace["model"], workspace["data"]["train"], tmp_path, 2, "model.router_aux_loss_coef=0.05")
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    values = [m["router_aux_loss"] for m in lines if "router_aux_loss" in m]
    assert len(values) == 2 and all(0.0 < v <= 8.0 for v in values)
