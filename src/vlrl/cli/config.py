"""`vlrl config [FILE] [key=value ...] [--sft]`: print the fully resolved config as YAML."""

from __future__ import annotations

import argparse

from vlrl.config import SFTConfig, TrainConfig, dump_config, load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="YAML config (omit to start from the defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.group_size=8")
    p.add_argument("--sft", action="store_true", help="validate against the SFT schema")


def run(args: argparse.Namespace) -> int:
    file, overrides = args.file, list(args.overrides)
    if file is not None and "=" in file:  # no file given, only overrides
        file, overrides = None, [file, *overrides]
    schema = SFTConfig if args.sft or (file and file.rsplit("/", 1)[-1].startswith("sft_")) else TrainConfig
    print(dump_config(load_config(file, overrides, schema=schema)), end="")
    return 0
