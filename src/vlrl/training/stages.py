"""Curricula: a run that moves through `stages:`, each overriding part of the config.

Vision-R1's Progressive Thinking Suppression Training is the model case: a short response limit
with a large group first, then longer responses with smaller groups. Each stage's `steps` counts
that stage's steps; the run's total is their sum, and the learning-rate schedule spans the whole
run. The stage of a step follows from the step number alone, so resuming inside a stage needs no
extra state.
"""

from __future__ import annotations

from itertools import accumulate

from vlrl.config import ConfigError, TrainConfig, apply_stage

# What a stage may change. Model, data and where the run writes stay fixed for the whole run.
STAGE_KEYS = (
    "rollout.group_size",
    "rollout.prompts_per_step",
    "rollout.max_new_tokens",
    "rollout.temperature",
    "rollout.top_p",
    "rollout.top_k",
    "rollout.dynamic_sampling",
    "rollout.max_resample_rounds",
    "algo.",
    "reward.",
    "train.steps",
    "train.eval_every",
    "train.save_every",
    "train.micro_batch_tokens",
)


def check_stages(cfg: TrainConfig) -> None:
    """Every stage key must be one a stage may change (errors name `stages[i].key`)."""
    for i, stage in enumerate(cfg.stages):
        for key in stage:
            if key in ("name", "steps"):
                continue
            if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in STAGE_KEYS):
                raise ConfigError(
                    [
                        (
                            "stages",
                            f"stages[{i}].{key}",
                            "a stage cannot change this; stages may set: " + ", ".join(STAGE_KEYS),
                        )
                    ]
                )


def stage_steps(cfg: TrainConfig) -> list[int]:
    return [apply_stage(cfg, i).train.steps for i in range(len(cfg.stages))]


def total_steps(cfg: TrainConfig) -> int:
    check_stages(cfg)
    return sum(stage_steps(cfg)) if cfg.stages else cfg.train.steps


def stage_index(cfg: TrainConfig, step: int) -> int | None:
    """The stage that runs step `step + 1` (the next one), None without stages."""
    if not cfg.stages:
        return None
    ends = list(accumulate(stage_steps(cfg)))
    return next((i for i, end in enumerate(ends) if step < end), len(ends) - 1)


def stage_config(cfg: TrainConfig, step: int) -> TrainConfig:
    """The config in force for the step after `step`."""
    index = stage_index(cfg, step)
    return cfg if index is None else apply_stage(cfg, index)
