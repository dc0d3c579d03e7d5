"""End-to-end RL on a tiny model, on CPU: each algorithm learns, freezing and LoRA hold, resume is exact.

The task: a random tiny policy already writes the letter "e" in about 40% of its 6-token answers;
a reward of 1 for answers containing it must become clearly more frequent within 20 steps.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers_rl import has_e_args, rl_workspace
from transformers import AutoModelForImageTextToText

from vlrl.cli import main
from vlrl.config import TrainConfig, load_config
from vlrl.models.loading import load_model
from vlrl.rollout import SamplingParams
from vlrl.training.grpo import GRPOTrainer

REWARD_FILE = """
def has_e(completions, **fields):
    return [1.0 if "e" in c else 0.0 for c in completions]

def constant(completions, **fields):
    return [1.0 for _ in completions]

def flaky(completions, **fields):
    if any("e" in c for c in completions):
        raise RuntimeError("user bug")
    return [0.0 for _ in completions]
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_models):
    return rl_workspace(tmp_path_factory.mktemp("rl"), REWARD_FILE, tiny_models["qwen2_vl"])


def make_config(ws, out, *overrides) -> TrainConfig:
    base = has_e_args(ws["model"], ws["data"]["train"], ws["reward"], out)
    return load_config(None, [*base, *overrides], schema=TrainConfig)


def policy_reward(trainer: GRPOTrainer) -> float:
    """Mean reward of 16 prompts x 8 samples with a fixed seed: the policy's expected reward,
    unaffected by what an algorithm logs (DAPO's filtered batches, for one, are biased)."""
    samples = trainer.train_samples[:16]
    prompts = [trainer.adapter.encode(s, trainer.template) for s in samples]
    params = SamplingParams(group_size=8, max_new_tokens=6, temperature=1.0, seed=1234)
    groups = trainer.backend.generate(prompts, params)
    return trainer.scorer.score(samples, groups, 6)[0].mean().item()


ALGORITHMS = {
    "grpo": [],
    "dr_grpo": ["algo.advantage=dr_grpo", "algo.loss_agg=seq_mean_token_sum_norm"],
    "dapo": ["algo.clip_high=0.28", "algo.loss_agg=token_mean", "rollout.dynamic_sampling=true"],
    "gspo": [
        "algo.policy_loss=gspo",
        "algo.loss_agg=seq_mean_token_mean",
        "algo.clip_low=3e-4",
        "algo.clip_high=4e-4",
        "algo.ppo_epochs=2",
    ],
    "rloo": ["algo.advantage=rloo"],
    "cispo": ["algo.policy_loss=cispo", "algo.ppo_epochs=2"],
    "sapo": ["algo.policy_loss=sapo", "algo.loss_agg=seq_mean_token_mean", "algo.ppo_epochs=2"],
    "reinforce_pp": ["algo.advantage=reinforce_pp_baseline", "algo.policy_loss=reinforce"],
}


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_each_algorithm_raises_mean_reward(workspace, tmp_path, algo):
    trainer = GRPOTrainer(make_config(workspace, tmp_path, *ALGORITHMS[algo]))
    before = policy_reward(trainer)
    trainer.train()
    after = policy_reward(trainer)
    assert after > before + 0.2, (algo, before, after)


def test_trainable_parameters_change_and_frozen_ones_do_not(workspace, tmp_path):
    trainer = GRPOTrainer(make_config(workspace, tmp_path, "model.freeze=[vision]", "train.steps=3"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    groups = trainer.adapter.parameter_groups(trainer.model)
    for name, p in groups["vision"]:
        assert not p.requires_grad and torch.equal(p, before[name]), name
    for group in ("connector", "language"):
        for name, p in groups[group]:
            assert p.requires_grad and not torch.equal(p, before[name]), name


def test_kl_to_a_reference_model_is_logged_and_grows(workspace, tmp_path):
    trainer = GRPOTrainer(make_config(workspace, tmp_path, "algo.kl_beta=0.1", "train.steps=4"))
    assert trainer.policy.reference is not None
    history = trainer.train()
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first update starts at the reference
    assert history[-1]["kl"] > 0


def test_entropy_bonus_alone_moves_the_policy_towards_higher_entropy(workspace, tmp_path):
    """A constant reward gives zero advantages: only the entropy term can produce a gradient."""
    reward = f"reward.functions=['{workspace['reward']}:constant']"
    still = GRPOTrainer(make_config(workspace, tmp_path / "a", reward, "train.steps=2")).train()
    assert all(h["grad_norm"] == 0 for h in still)
    bonus = GRPOTrainer(
        make_config(workspace, tmp_path / "b", reward, "algo.entropy_coef=0.5", "train.steps=6")
    ).train()
    assert all(h["grad_norm"] > 0 for h in bonus)
    assert bonus[-1]["entropy"] > bonus[0]["entropy"]


def test_no_reference_model_without_kl(workspace, tmp_path):
    assert GRPOTrainer(make_config(workspace, tmp_path, "train.steps=1")).policy.reference is None


def test_raising_user_reward_gets_fallback_and_training_continues(workspace, tmp_path):
    flaky = f"{workspace['reward']}:flaky"
    cfg = make_config(
        workspace, tmp_path, f"reward.functions=['{workspace['reward']}:has_e', '{flaky}']", "train.steps=3"
    )
    trainer = GRPOTrainer(cfg)
    history = trainer.train()
    assert len(history) == 3
    assert trainer.scorer.failures["flaky"] > 0


def test_lora_run_saves_reloads_and_merges(workspace, tmp_path):
    cfg = make_config(
        workspace, tmp_path / "run", "model.lora.enabled=true", "model.lora.r=4", "train.steps=3"
    )
    trainer = GRPOTrainer(cfg)
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert changed and all(torch.equal(p, base[n]) for n, p in trainer.model.named_parameters() if n in base)
    ckpt = tmp_path / "run" / "checkpoints" / "step_000003"
    assert (ckpt / "adapter_config.json").is_file()

    merged_dir = tmp_path / "merged"
    assert main(["merge", str(ckpt), "--out", str(merged_dir)]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir)
    lm = load_model(merged_dir)
    sample = trainer.train_samples[0]
    from vlrl.models.batching import collate

    batch = collate([lm.adapter.encode(sample, trainer.template)], lm.adapter.tokenizer.pad_token_id)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**batch).logits, trainer.model(**batch).logits, atol=1e-5, rtol=1e-5
        )

    # Resuming from the LoRA checkpoint continues training the same adapters.
    resumed = GRPOTrainer(
        make_config(
            workspace,
            tmp_path / "run",
            "model.lora.enabled=true",
            "model.lora.r=4",
            "train.steps=4",
            f"train.resume={ckpt}",
        )
    )
    assert resumed.step == 3
    assert len(resumed.train()) == 1


def test_killed_and_resumed_run_takes_exactly_the_uninterrupted_steps(workspace, tmp_path):
    keys = ("loss", "reward/total/mean", "response_length/mean", "grad_norm")
    straight = GRPOTrainer(make_config(workspace, tmp_path / "a", "train.steps=6")).train()

    first = GRPOTrainer(make_config(workspace, tmp_path / "b", "train.steps=6", "train.save_every=3"))
    first.train(until=3)  # as if killed right after the step-3 checkpoint
    del first
    resumed = GRPOTrainer(make_config(workspace, tmp_path / "b", "train.steps=6", "train.resume=auto"))
    assert resumed.step == 3
    rest = resumed.train()
    assert [h["step"] for h in rest] == [4, 5, 6]
    for a, b in zip(straight[3:], rest, strict=True):
        for k in keys:
            assert a[k] == b[k], (a["step"], k, a[k], b[k])
    logged = [
        json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged == [1, 2, 3, 4, 5, 6]


def test_cli_train_runs_a_config(workspace, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"model: {{path: {workspace['model']}}}\n"
        f"data: {{train: {workspace['data']['train']}, template: answer_only, eval: {{heldout: {workspace['data']['heldout']}}}}}\n"
        "rollout: {group_size: 2, prompts_per_step: 2, max_new_tokens: 4}\n"
        f"reward: {{functions: ['{workspace['reward']}:has_e', format, accuracy]}}\n"
        f"train: {{steps: 2, device: cpu, output_dir: {tmp_path / 'out'}, eval_every: 2}}\n"
        "logging: {progress: false}\n"
    )
    assert main(["train", str(cfg)]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in (
        "reward/format/mean",
        "reward/total/mean",
        "acc",
        "timing_s/gen",
        "timing_s/update",
        "frac_zero_std_groups",
        "entropy",
        "clip_frac",
        "grad_norm",
        "eval/heldout/acc",
    ):
        assert key in records[-1], key
    assert (tmp_path / "out" / "checkpoints" / "step_000002" / "model.safetensors").is_file()


def test_frozen_vision_runs_once_per_prompt_per_step(workspace, tmp_path):
    overrides = [
        "model.freeze=[vision, connector]",
        "algo.kl_beta=0.1",
        "algo.ppo_epochs=2",
        "train.micro_batch_tokens=600",
        "train.steps=1",
    ]
    trainer = GRPOTrainer(make_config(workspace, tmp_path, *overrides))
    vision = trainer.model.get_submodule(trainer.adapter.module_patterns["vision"][0])
    calls = []
    vision.register_forward_hook(lambda *_: calls.append(1))
    batch, timing = trainer.rollout()
    trainer.score_and_filter(batch, timing)
    trainer.compute_advantages(batch)
    calls.clear()
    trainer.policy_update(batch, timing)
    # Old-policy, reference and two update epochs over several micro-batches: still one tower
    # pass per prompt.
    assert len(calls) == trainer.cfg.rollout.prompts_per_step


def test_kl_in_reward_shapes_the_advantages(workspace, tmp_path):
    # Equal rewards in every group: without the KL term every advantage is 0. With it, under
    # Dr. GRPO (A = r - mean_group(r)), r = 1 - beta * KL gives A = -beta * (KL - mean_group(KL)).
    cfg = make_config(
        workspace,
        tmp_path,
        f"reward.functions=['{workspace['reward']}:constant']",
        "algo.advantage=dr_grpo",
        "algo.kl_beta=0.5",
        "algo.kl_in_reward=true",
    )
    trainer = GRPOTrainer(cfg)
    with torch.no_grad():  # move the policy off the reference, so that the KL is not 0
        head = trainer.model.get_output_embeddings().weight
        head.add_(torch.randn(head.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    batch, _ = trainer.rollout()
    trainer._score(batch)
    assert torch.equal(batch.rewards, torch.ones_like(batch.rewards))
    trainer.compute_advantages(batch)
    kl = batch.kl.view_as(batch.rewards)  # [P, G]
    assert (kl > 0).any()
    expected = -0.5 * (kl - kl.mean(1, keepdim=True))
    torch.testing.assert_close(batch.advantages, expected.reshape(-1))
    assert batch.advantages.abs().max() > 0


def test_kl_in_reward_is_logged(workspace, tmp_path):
    trainer = GRPOTrainer(
        make_config(workspace, tmp_path, "algo.kl_beta=0.5", "algo.kl_in_reward=true", "train.steps=3")
    )
    history = trainer.train()
    # Folded into the reward, still logged: 0 while the policy is the reference (step 1 samples
    # before any update, and every estimator is 0 at equal log-probs), then positive.
    assert len(history) == 3 and history[0]["kl"] == 0.0 and history[-1]["kl"] > 0


@pytest.mark.parametrize("precision", [["model.dtype=bfloat16"], ["train.autocast=bfloat16"]])
def test_gradient_checkpointing_bf16_and_group_lr(workspace, tmp_path, precision):
    # Pure bf16 weights round away updates below their precision: a LayerNorm weight of 1.0 moves
    # only in steps of 2^-7 = 0.0078, so two Adam steps of lr 1e-3 leave it unchanged. The vision
    # lr is large enough to move every weight; autocast keeps fp32 masters and has no such floor.
    trainer = GRPOTrainer(
        make_config(
            workspace,
            tmp_path,
            "model.gradient_checkpointing=true",
            *precision,
            "model.group_lr={vision: 1e-2}",
            "train.max_grad_norm=0",
            "train.steps=2",
        )
    )
    lrs = sorted(g["lr"] for g in trainer.optimizer.param_groups)
    assert lrs == [3e-3, 1e-2]
    vision_params = {id(p) for _, p in trainer.adapter.parameter_groups(trainer.model)["vision"]}
    (vision_group,) = [g for g in trainer.optimizer.param_groups if g["lr"] == 1e-2]
    assert {id(p) for p in vision_group["params"]} == vision_params
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    expected = torch.bfloat16 if "model.dtype=bfloat16" in precision else torch.float32
    assert next(trainer.model.parameters()).dtype == expected
    changed = sum(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    assert changed == len(before)


def test_staged_run_switches_length_and_group_size_at_the_boundaries(workspace, tmp_path):
    stages = (
        "stages=[{name: short, steps: 3, rollout.max_new_tokens: 3, rollout.group_size: 6},"
        " {name: long, steps: 2, rollout.max_new_tokens: 8, rollout.group_size: 2}]"
    )
    trainer = GRPOTrainer(make_config(workspace, tmp_path, stages, "train.save_every=3"))
    assert trainer.total_steps == 5
    trainer.train(until=3)
    resumed = GRPOTrainer(make_config(workspace, tmp_path, stages, "train.resume=auto"))
    resumed.train()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in logged] == [0, 0, 0, 1, 1]
    assert [r["rollout/group_size"] for r in logged] == [6, 6, 6, 2, 2]
    assert [r["rollout/max_new_tokens"] for r in logged] == [3, 3, 3, 8, 8]
    assert all(r["response_length/mean"] <= 3 for r in logged[:3])


def test_a_stage_cannot_change_the_model(workspace, tmp_path):
    from vlrl.config import ConfigError

    with pytest.raises(ConfigError, match=r"stages\[0\].model.path: a stage cannot change this"):
        GRPOTrainer(make_config(workspace, tmp_path, "stages=[{steps: 2, model.path: elsewhere}]"))
