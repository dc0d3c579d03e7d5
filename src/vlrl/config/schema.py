"""The two top-level schemas: `TrainConfig` for RL runs and `SFTConfig` for supervised fine-tuning."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from vlrl.config.sections import (
    GROUP_RELATIVE_ADVANTAGES,
    AlgoSection,
    DataSection,
    DistributedSection,
    LoggingSection,
    ModelSection,
    MonitorSection,
    RewardSection,
    RolloutSection,
    Section,
    SFTSection,
    TrainSection,
    field_error,
)


class TrainConfig(Section):
    """Everything an RL run (GRPO family) reads."""

    model: ModelSection = Field(description="The policy model and which parts of it train.")
    data: DataSection = Field(description="Training and evaluation data, and how prompts are built.")
    rollout: RolloutSection = Field(default_factory=RolloutSection, description="Sampling completions.")
    reward: RewardSection = Field(default_factory=RewardSection, description="Scoring completions.")
    algo: AlgoSection = Field(default_factory=AlgoSection, description="Advantages, policy loss and KL.")
    train: TrainSection = Field(default_factory=TrainSection, description="Optimizer, schedule, checkpoints.")
    distributed: DistributedSection = Field(
        default_factory=DistributedSection, description="torchrun data parallelism (FSDP2)."
    )
    logging: LoggingSection = Field(default_factory=LoggingSection, description="Where metrics go.")
    monitor: MonitorSection = Field(
        default_factory=MonitorSection, description="Training-dynamics metrics and alarms."
    )
    stages: list[dict[str, Any]] = Field(
        [],
        description="Curriculum run in order, each stage a mapping of overrides to this config:"
        " dotted keys ('rollout.max_new_tokens': 64) or nested sections, plus 'name' (a label) and"
        " 'steps' (shorthand for train.steps: how long the stage runs). See `vlrl.config.apply_stage`.",
    )

    @model_validator(mode="after")
    def _groups_to_compare_with(self) -> TrainConfig:
        # With stages, the group size in force is each stage's, checked when the stage is applied.
        advantage = self.algo.advantage
        if self.stages or self.rollout.group_size > 1 or advantage not in GROUP_RELATIVE_ADVANTAGES:
            return self
        message = (
            f"must be at least 2 with algo.advantage {advantage}, which compares each response with"
            " the others of its group (with 1, every advantage is 0)"
        )
        raise field_error("TrainConfig", "rollout.group_size", message, self.rollout.group_size)


class SFTConfig(Section):
    """Everything a supervised fine-tuning run reads (for instance a cold start before RL)."""

    model: ModelSection = Field(description="The model and which parts of it train.")
    data: DataSection = Field(description="Training and evaluation data, and how prompts are built.")
    train: TrainSection = Field(default_factory=TrainSection, description="Optimizer, schedule, checkpoints.")
    distributed: DistributedSection = Field(
        default_factory=DistributedSection, description="torchrun data parallelism (FSDP2)."
    )
    logging: LoggingSection = Field(default_factory=LoggingSection, description="Where metrics go.")
    sft: SFTSection = Field(default_factory=SFTSection, description="Epochs, batch size and target field.")

    @model_validator(mode="after")
    def _stop_needs_evaluations(self) -> SFTConfig:
        if self.sft.stop_at_acc is not None and not (self.train.eval_every and self.data.eval):
            message = "needs evaluations to check: set train.eval_every and data.eval"
            raise field_error("SFTConfig", "sft.stop_at_acc", message, self.sft.stop_at_acc)
        return self
