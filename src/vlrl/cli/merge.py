"""`vlrl merge LORA_CHECKPOINT --out DIR`: fold LoRA adapters into the base weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlrl.training.checkpoint import merge_lora


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a LoRA checkpoint folder (has adapter_config.json)")
    p.add_argument("--out", required=True, help="output folder: a plain Hugging Face checkpoint")


def run(args: argparse.Namespace) -> int:
    out = merge_lora(Path(args.checkpoint), Path(args.out))
    print(f"merged model written to {out}")
    return 0
