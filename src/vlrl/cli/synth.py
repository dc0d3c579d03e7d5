"""`vlrl synth --task T --n N --out DIR --seed S [--heldout H]`."""

from __future__ import annotations

import argparse

from vlrl.synth import TASKS, generate_dataset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--n", type=int, required=True, help="number of samples (train + held-out)")
    p.add_argument("--out", required=True, help="output folder: train.jsonl, heldout.jsonl, images/")
    p.add_argument("--seed", type=int, default=0, help="same seed, byte-identical files")
    p.add_argument(
        "--heldout",
        type=_count_or_fraction,
        default=0.1,
        help="held-out share (0.1) or count (200); default 0.1",
    )
    p.add_argument("--image-size", type=int, default=112, help="square image side in pixels")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _count_or_fraction(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def run(args: argparse.Namespace) -> int:
    paths = generate_dataset(
        args.task,
        args.n,
        args.out,
        args.seed,
        heldout=args.heldout,
        image_size=args.image_size,
        progress=not args.no_progress,
    )
    for split, path in paths.items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        print(f"{split}: {n} samples -> {path}")
    return 0
