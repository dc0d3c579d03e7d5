"""`vlrl tiny-model --family F --out DIR [--size S] [--seed N]`."""

from __future__ import annotations

import argparse

from vlrl.models.tiny.factory import FAMILIES, SIZES, build_tiny_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", required=True, choices=sorted(FAMILIES))
    p.add_argument("--out", required=True, help="output folder (Hugging Face format)")
    p.add_argument("--size", default="tiny", choices=list(SIZES), help="width preset (default: tiny)")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    p.add_argument("--vocab-size", type=int, default=400, help="BPE vocabulary size before special tokens")


def run(args: argparse.Namespace) -> int:
    out = build_tiny_model(args.family, args.out, size=args.size, seed=args.seed, vocab_size=args.vocab_size)
    print(f"tiny {args.family} ({args.size}) written to {out}")
    return 0
