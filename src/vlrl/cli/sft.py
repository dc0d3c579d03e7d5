"""`vlrl sft CONFIG [key=value ...]`: supervised fine-tuning (cold start) on `solution` targets."""

from __future__ import annotations

import argparse

from vlrl.cli.train import run_trainer
from vlrl.config import SFTConfig, load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config with the SFT schema (see configs/sft_tiny.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sft.batch_size=16 train.lr=1e-4")


def run(args: argparse.Namespace) -> int:
    from vlrl.training.sft import SFTTrainer

    cfg = load_config(args.config, args.overrides, schema=SFTConfig)
    return run_trainer(args, SFTTrainer(cfg), lambda last: f"loss={last['loss']:.4f}")
