"""`vlrl report RUN_DIR [--out FILE] [--max-rollout-steps N]`.

Writes one HTML file that needs nothing else to open (no network, images inlined): a summary
(start, end and best of the key metrics, eval accuracy, alarms, run time, config essentials), every
logged metric that changes plotted by group (the constant ones listed, folded), the run's alarms,
and a viewer of the dumped rollouts. A malformed line
of a run file stops it with `FILE:LINE: what is wrong`; only the partial last line a killed run
leaves is skipped, with a warning (see `vlrl.report.runfiles`).
"""

from __future__ import annotations

import argparse

from vlrl.report import REPORT_FILE, write_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run folder (train.output_dir) holding metrics.jsonl, rollouts.jsonl, ...")
    p.add_argument("--out", help=f"HTML file to write (default RUN_DIR/{REPORT_FILE})")
    p.add_argument(
        "--max-rollout-steps",
        type=int,
        default=50,
        help="show the rollouts of at most this many dumped steps, evenly spread (keeps the file small)",
    )


def run(args: argparse.Namespace) -> int:
    if args.max_rollout_steps < 1:
        raise ValueError(f"--max-rollout-steps must be at least 1, got {args.max_rollout_steps}")
    path = write_report(args.run_dir, args.out, args.max_rollout_steps)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0
