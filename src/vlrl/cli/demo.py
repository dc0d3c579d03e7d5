"""`vlrl demo [--out DIR] [--seed S] [--rl-steps N] [--sft-steps N] [--sft-target A] [--minutes M]`.

The README's main job: cold-start SFT then GRPO on a tiny model, on CPU, with a before/after table.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from vlrl.demo import DemoSettings, run_demo
from vlrl.models.tiny.factory import FAMILIES


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    p.add_argument("--out", type=Path, default=d.out, help=f"run folder (default {d.out})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--family", default=d.family, choices=sorted(FAMILIES), help="tiny model family")
    p.add_argument(
        "--sft-steps", type=int, default=d.sft_steps, help="length of the cold start's schedule (steps of 32)"
    )
    p.add_argument(
        "--sft-target",
        type=float,
        default=d.sft_target,
        help=f"stop the cold start once this share of the probe set is right (default {d.sft_target})",
    )
    p.add_argument("--rl-steps", type=int, default=d.rl_steps, help="GRPO steps of 32 prompts x 8 samples")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="GRPO steps between evaluations")
    p.add_argument(
        "--minutes",
        type=float,
        default=d.minutes,
        help=f"time budget of the whole demo: GRPO stops early to keep it (default {d.minutes}; 0: none)",
    )
    p.add_argument("--heldout", type=int, default=d.n_heldout, help="held-out items evaluated")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def run(args: argparse.Namespace) -> int:
    settings = DemoSettings(
        out=args.out,
        seed=args.seed,
        family=args.family,
        sft_steps=args.sft_steps,
        sft_target=args.sft_target,
        rl_steps=args.rl_steps,
        eval_every=args.eval_every,
        minutes=args.minutes or None,
        n_heldout=args.heldout,
        progress=not args.no_progress,
    )
    from vlrl.training.guards import RunStopped

    try:
        run_demo(settings)
    except RunStopped as exc:  # Ctrl-C or SIGTERM inside a trainer: it saved and says where
        print(f"vlrl demo: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C between the trainers' steps (data, evaluation, report)
        print("vlrl demo: stopped by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0
