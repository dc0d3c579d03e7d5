"""Every model family of the tiny factory, through the whole RL path on CPU.

For each family: a 20-step GRPO run raises the reward (the has-"e" task of test_grpo.py, same
margin), freezing any one module group keeps exactly that group bit-identical while the others
train (MoE routers and experts included), LoRA adapts every group that has LoRA targets (fused
expert weights included) and leaves the base weights alone, and `vlrl eval` answers every item.
A new family entry in `vlrl.models.tiny.factory.FAMILIES` is covered without touching this file.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers_rl import HAS_E_REWARD, has_e_args, rl_workspace

from vlrl.cli import main
from vlrl.config import TrainConfig, load_config
from vlrl.models.loading import load_model
from vlrl.models.tiny.factory import FAMILIES
from vlrl.rollout import SamplingParams
from vlrl.training.grpo import GRPOTrainer

FAMILY_NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("families")
    made = {}

    def get(family: str) -> dict:
        if family not in made:
            made[family] = rl_workspace(root / family, HAS_E_REWARD, tiny_models[family])
        return made[family]

    return get


def trainer_for(ws, out, *overrides) -> GRPOTrainer:
    args = has_e_args(ws["model"], ws["data"]["train"], ws["reward"], out)
    return GRPOTrainer(load_config(None, [*args, *overrides], schema=TrainConfig))


def policy_reward(trainer: GRPOTrainer) -> float:
    """Mean reward of 16 prompts x 8 samples at a fixed seed: the policy's expected reward."""
    samples = trainer.train_samples[:16]
    prompts = [trainer.adapter.encode(s, trainer.template) for s in samples]
    groups = trainer.backend.generate(prompts, SamplingParams(group_size=8, max_new_tokens=6, seed=1234))
    return trainer.scorer.score(samples, groups, 6)[0].mean().item()


def snapshot(trainer: GRPOTrainer) -> dict[str, dict[str, torch.Tensor]]:
    """group -> parameter name -> a copy of its values."""
    return {
        group: {name: p.detach().clone() for name, p in params}
        for group, params in trainer.adapter.parameter_groups(trainer.model).items()
    }


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_grpo_raises_the_reward(workspaces, tmp_path, family):
    trainer = trainer_for(workspaces(family), tmp_path)
    before = policy_reward(trainer)
    trainer.train()
    after = policy_reward(trainer)
    assert after > before + 0.2, (family, before, after)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_freezing_any_group_keeps_exactly_it_fixed(workspaces, tmp_path, family):
    ws = workspaces(family)
    groups = load_model(ws["model"]).adapter.groups()
    for group in groups:
        trainer = trainer_for(ws, tmp_path / group, f"model.freeze=[{group}]", "train.steps=1")
        before = snapshot(trainer)
        trainer.train()
        after = snapshot(trainer)
        for g in groups:
            same = [torch.equal(before[g][n], after[g][n]) for n in before[g]]
            if g == group:
                assert all(same), (family, group, "a frozen parameter moved")
            else:
                # Every other group learns (a group may hold parameters no response reaches,
                # such as the unused rows of an embedding, hence "not all unchanged").
                assert not all(same), (family, group, f"{g} did not train")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lora_adapts_every_group_with_targets_and_keeps_the_base(workspaces, tmp_path, family):
    trainer = trainer_for(
        workspaces(family),
        tmp_path,
        "model.lora.enabled=true",
        "model.lora.target=all",
        "model.lora.r=4",
        "model.lora.dropout=0",  # peft applies no dropout to fused expert weights
        "train.steps=1",
    )
    adapter = trainer.adapter
    before = snapshot(trainer)
    trainer.train()
    after = snapshot(trainer)
    expected = {g for g in adapter.groups() if adapter.lora_modules.get(g) or adapter.lora_parameters.get(g)}
    with_lora = {g for g, params in before.items() if any("lora_" in n for n in params)}
    assert with_lora == expected, family
    if "experts" in adapter.groups():
        # The fused [E, ...] expert weights are adapted, not only linear layers around them.
        assert any("lora_" in n for n in before["experts"]), family
    for g, params in before.items():
        base = [n for n in params if "lora_" not in n]
        assert all(torch.equal(params[n], after[g][n]) for n in base), (family, g, "a base weight moved")
    moved = [
        n
        for g in with_lora
        for n in before[g]
        if "lora_B" in n and not torch.equal(before[g][n], after[g][n])
    ]
    assert moved, (family, "no LoRA weight learned")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_vlrl_eval_answers_every_item(workspaces, tmp_path, family):
    ws = workspaces(family)
    held = ws["data"]["heldout"]
    out = tmp_path / "predictions.jsonl"
    args = ["eval", "--model", str(ws["model"]), "--data", str(held), "--benchmark", "count"]
    assert (
        main([*args, "--max-new-tokens", "6", "--batch-size", "4", "--out", str(out), "--no-progress"]) == 0
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in held.read_text().splitlines()]
    assert [r["id"] for r in records] == ids
    assert all(1 <= r["length"][0] <= 6 and r["score"][0] in (0.0, 1.0) for r in records)


@pytest.mark.parametrize("family", ["deepseek_vl2", "deepseek_vl2_mla"])
def test_deepseek_vl2_trains_lora_on_attention_and_experts_with_a_frozen_router_under_replay(
    workspaces, tmp_path, family
):
    """MoERL-Vision's model in the MoE setting vlrl recommends: LoRA on the language model's
    attention (and its dense / shared MLPs) and on the fused routed experts, the routers frozen,
    rollout routing replay (R3). Every update uses the rollout's experts, the attention and expert
    adapters learn, and the routers and all base weights stay bit-identical. (That GRPO raises the
    reward is `test_grpo_raises_the_reward`, full fine-tuning: at these widths LoRA without the
    output head moves the has-"e" reward too slowly to test in a few steps.)"""
    trainer = trainer_for(
        workspaces(family),
        tmp_path,
        "model.lora.enabled=true",
        "model.lora.target=[language,experts]",
        "model.lora.dropout=0",  # peft applies no dropout to fused expert weights
        "model.freeze=[router]",
        "model.routing_replay=R3",
        "train.steps=3",
    )
    before = snapshot(trainer)
    history = trainer.train()
    after = snapshot(trainer)
    assert [h["moe/route_mismatch"] for h in history] == [0.0] * 3
    attention = ("q_proj", "kv_b_proj") if family.endswith("mla") else ("q_proj", "k_proj")
    learned = {
        # peft names a fused parameter's adapter after its module (`mlp.experts.lora_B...`)
        "language": [
            n for n in before["language"] if "lora_B" in n and any(f".{a}." in n for a in attention)
        ],
        "experts": [n for n in before["experts"] if "lora_B" in n],
    }
    for group, adapters in learned.items():
        assert adapters, (family, group, "has no LoRA")
        assert all(not torch.equal(before[group][n], after[group][n]) for n in adapters), (family, group)
    for group, params in before.items():
        base = [n for n in params if "lora_" not in n]
        assert all(torch.equal(params[n], after[group][n]) for n in base), (
            family,
            group,
            "a base weight moved",
        )
