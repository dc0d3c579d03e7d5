"""`vlrl sft CONFIG [key=value ...]`: supervised fine-tuning (cold start) on `solution` targets."""

from __future__ import annotations

import argparse

from vlrl.config import SFTConfig, load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config with the SFT schema (see configs/sft_tiny.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sft.batch_size=16 train.lr=1e-4")


def run(args: argparse.Namespace) -> int:
    from vlrl.training.sft import SFTTrainer

    cfg = load_config(args.config, args.overrides, schema=SFTConfig)
    trainer = SFTTrainer(cfg)
    main = trainer.world.is_main  # one report per job, not one per rank
    for line in trainer.load_reports if main else ():
        print(line)
    history = trainer.train()
    if not main:
        return 0
    if history:
        last = history[-1]
        print(f"final step {last['step']}: loss={last['loss']:.4f}")
    print(f"run directory: {cfg.train.output_dir} (checkpoints: {cfg.train.output_dir}/checkpoints)")
    return 0
