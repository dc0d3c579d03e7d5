"""`vlrl train CONFIG [key=value ...]`: R1-style RL (GRPO family) on a VLM."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable

from vlrl.cli import train_and_report
from vlrl.config import TrainConfig, load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.group_size=8 train.lr=1e-5")


def run(args: argparse.Namespace) -> int:
    from vlrl.training.grpo import GRPOTrainer

    cfg = load_config(args.config, args.overrides, schema=TrainConfig)
    keys = ("reward/total/mean", "acc", "response_length/mean", "timing_s/step")
    return run_trainer(
        args,
        GRPOTrainer(cfg),
        lambda last: ", ".join(f"{k}={last[k]:.3f}" for k in keys if k in last),
    )


def run_trainer(args: argparse.Namespace, trainer, final: Callable[[dict], str]) -> int:
    """`train_and_report` for `vlrl train` and `vlrl sft`; a run that stops early (divergence, a
    failed save, SIGTERM / Ctrl-C) prints one line and, when interrupted, the command resuming it."""
    from vlrl.training.guards import Interrupted, RunStopped

    try:
        return train_and_report(trainer, trainer.cfg.train.output_dir, final)
    except RunStopped as exc:
        if trainer.world.is_main:
            print(f"vlrl {args.command}: {exc}", file=sys.stderr)
            if isinstance(exc, Interrupted):
                kept = [o for o in args.overrides if not o.startswith("train.resume=")]
                command = ["vlrl", args.command, args.config, *kept, "train.resume=auto"]
                print(f"resume with: {shlex.join(command)}", file=sys.stderr)
        return exc.exit_code
