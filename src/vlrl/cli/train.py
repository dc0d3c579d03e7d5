"""`vlrl train CONFIG [key=value ...]`: R1-style RL (GRPO family) on a VLM."""

from __future__ import annotations

import argparse

from vlrl.cli import train_and_report
from vlrl.config import TrainConfig, load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.group_size=8 train.lr=1e-5")


def run(args: argparse.Namespace) -> int:
    from vlrl.training.grpo import GRPOTrainer

    cfg = load_config(args.config, args.overrides, schema=TrainConfig)
    keys = ("reward/total/mean", "acc", "response_length/mean", "timing_s/step")
    return train_and_report(
        GRPOTrainer(cfg),
        cfg.train.output_dir,
        lambda last: ", ".join(f"{k}={last[k]:.3f}" for k in keys if k in last),
    )
