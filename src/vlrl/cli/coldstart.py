"""`vlrl coldstart --data FILE --vlm URL --reasoner URL --out FILE [...]`: Vision-R1 cold-start data.

Each sample's image is described by the VLM, the question is solved from that description by
the text reasoner, and only samples it answers right are written, as SFT rows with a `solution`
(see `vlrl.coldstart.pipeline`). Re-running the same command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import logging

from vlrl.coldstart import SOLUTION_LAYOUTS, ColdStartConfig, run_coldstart


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data file in any supported layout (see `vlrl data`)")
    p.add_argument("--vlm", required=True, help="OpenAI-compatible VLM server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--reasoner", required=True, help="OpenAI-compatible text reasoning model server")
    p.add_argument("--out", required=True, help="output JSONL, appended to; ids already decided are skipped")
    p.add_argument("--vlm-model", help="model id for the VLM server (default: the first it lists)")
    p.add_argument("--reasoner-model", help="model id for the reasoner server (default: the first it lists)")
    p.add_argument("--concurrency", type=int, default=4, help="samples in flight at once")
    p.add_argument(
        "--retries", type=int, default=3, help="retries per request on connection errors, 429, 5xx"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request attempt")
    p.add_argument("--template", default="think_answer", choices=list(SOLUTION_LAYOUTS), help="SFT layout")
    p.add_argument("--max-tokens", type=int, default=4096, help="completion limit of each request")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature of both models")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = ColdStartConfig(
        vlm_url=args.vlm,
        reasoner_url=args.reasoner,
        vlm_model=args.vlm_model,
        reasoner_model=args.reasoner_model,
        template=args.template,
        concurrency=args.concurrency,
        retries=args.retries,
        timeout=args.timeout,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
    )
    report = run_coldstart(args.data, args.out, cfg, progress=not args.no_progress)
    rejected = ", ".join(f"{n} {reason}" for reason, n in report["rejected"].items() if n) or "none"
    print(
        f"kept {report['kept']} of {report['total']} samples (rejected: {rejected}; "
        f"{report['resumed']} decided by earlier runs)"
    )
    print(f"written: {args.out}, {args.out}.rejected.jsonl, {args.out}.report.json")
    return 0
