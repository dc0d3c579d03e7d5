"""Helpers for end-to-end training tests: the has-"e" RL task, short cold starts on rewritten
targets, and the trained model's log-probs of a rollout backend's samples."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from vlrl.config import SFTConfig, load_config
from vlrl.models.logprobs import response_logprobs
from vlrl.rollout import SamplingParams
from vlrl.training.sft import SFTTrainer

# A reward file for `has_e_args`: 1 when the answer holds an "e", which a tiny policy learns fast.
HAS_E_REWARD = """
def has_e(completions, **fields):
    return [1.0 if "e" in c else 0.0 for c in completions]
"""

# Settings every tiny end-to-end run shares (a one-word system prompt keeps prompts short).
COMMON = ["data.system_prompt=Answer.", "train.device=cpu", "logging.progress=false"]


def rewrite_targets(data_file: Path, target: Callable[[dict], str]) -> None:
    """Replace every row's `solution` with `target(row)`: short targets a micro model learns fast."""
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    data_file.write_text("".join(json.dumps(row | {"solution": target(row)}) + "\n" for row in rows))


def short_sft(model: Path, train_file: Path, out: Path, steps: int, *overrides: str) -> Path:
    """A cold-start SFT of `steps` steps of 16 samples; returns its final checkpoint folder."""
    args = [
        *COMMON,
        f"data.train={train_file}",
        f"model.path={model}",
        f"train.steps={steps}",
        "sft.batch_size=16",
        "sft.epochs=100",
        f"train.output_dir={out}",
        *overrides,
    ]
    SFTTrainer(load_config(None, args, schema=SFTConfig)).train()
    return out / "checkpoints" / f"step_{steps:06d}"


def has_e_args(model: Path, train_file: Path, reward_file: Path, out: Path) -> list[str]:
    """The has-"e" RL task's settings (`reward_file` defines `has_e`): 20 steps of 4 prompts x 4
    answers of 6 tokens at lr 3e-3, on which a tiny policy's reward clearly rises."""
    return [
        f"model.path={model}",
        f"data.train={train_file}",
        "data.template=answer_only",
        "rollout.group_size=4",
        "rollout.prompts_per_step=4",
        "rollout.max_new_tokens=6",
        f"reward.functions=['{reward_file}:has_e']",
        "train.steps=20",
        "train.lr=3e-3",
        "train.lr_schedule=constant",
        "train.device=cpu",
        f"train.output_dir={out}",
        "logging.progress=false",
    ]


def rl_workspace(root: Path, reward_source: str, model: Path) -> dict:
    """A folder with the counting data (40 items, 8 held out) and a reward file holding
    `reward_source`: what the RL tests' `has_e_args` runs need, with the tiny `model`."""
    from vlrl.synth import generate_dataset

    data = generate_dataset("counting", 40, root / "data", seed=0, heldout=8)
    (root / "rewards.py").write_text(reward_source)
    return {"root": root, "model": model, "data": data, "reward": root / "rewards.py"}


def trainer_logprobs(trainer, sequences: list, lengths: list[int]) -> torch.Tensor:
    """[N, T] log-probs of the trained model for `sequences` (prompts with their responses, of
    `lengths` tokens) teacher-forced, vision placeholders blocked as in training, no gradient."""
    vocab = trainer.model.get_output_embeddings().weight.shape[0]
    blocked = torch.tensor(trainer.adapter.blocked_token_ids(vocab))
    pad = trainer.adapter.tokenizer.pad_token_id
    with torch.no_grad():
        logp, _ = response_logprobs(trainer.model, sequences, lengths, pad, 1.0, blocked)
    return logp


def engine_vs_trainer(trainer, prompts: list, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs [N, T] of the rollout backend's samples of `prompts`: as the backend reported them,
    and as the trained model computes them (`trainer_logprobs`); both zero past each response."""
    groups = trainer.backend.generate(prompts, params)
    flat = [(p, c) for p, g in zip(prompts, groups, strict=True) for c in g]
    lengths = [c.token_ids.numel() for _, c in flat]
    ours = trainer_logprobs(trainer, [p.with_response(c.token_ids) for p, c in flat], lengths)
    engine = torch.zeros_like(ours)
    for i, (_, c) in enumerate(flat):
        engine[i, : lengths[i]] = c.logprobs
    mask = torch.arange(ours.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    return engine * mask, ours * mask
