"""`vlrl config [FILE] [key=value ...] [--sft]`: print the fully resolved config as YAML.

Without a file it prints the defaults (with the overrides), `???` marking each required key left
to set: a starting point to save and fill in. `--reference` prints every key of both schemas
with its type, default and description as markdown (the text of docs/config.md).
"""

from __future__ import annotations

import argparse

from vlrl.config import SFTConfig, TrainConfig, config_template, dump_config, load_config, reference_markdown


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="YAML config (omit to start from the defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.group_size=8")
    p.add_argument("--sft", action="store_true", help="validate against the SFT schema")
    p.add_argument(
        "--reference",
        action="store_true",
        help="print every config key, type, default and description (markdown)",
    )


def run(args: argparse.Namespace) -> int:
    if args.reference:
        if args.file is not None:
            raise ValueError("--reference takes no config file or overrides: it documents the schemas")
        print(reference_markdown(), end="")
        return 0
    file, overrides = args.file, list(args.overrides)
    if file is not None and "=" in file:  # no file given, only overrides
        file, overrides = None, [file, *overrides]
    schema = SFTConfig if args.sft or (file and file.rsplit("/", 1)[-1].startswith("sft_")) else TrainConfig
    if file is None:
        print(config_template(overrides, schema=schema), end="")
    else:
        print(dump_config(load_config(file, overrides, schema=schema)), end="")
    return 0
