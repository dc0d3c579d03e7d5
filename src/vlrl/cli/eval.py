"""`vlrl eval --model DIR --data FILE [--benchmark NAME] [--n N --k 1,4] [--out predictions.jsonl]`
[--image-root DIR] [--skip-invalid].

Generates answers with the model's chat template and a prompt template, extracts and scores
them by the benchmark's conventions, prints accuracy (95% Wilson interval), pass@k and a
per-category table, and writes one JSON line per question to `--out`.
"""

from __future__ import annotations

import argparse
import json

from vlrl.cli.data import add_image_arguments
from vlrl.data.prompts import TEMPLATES
from vlrl.evaluation.benchmarks import BENCHMARKS
from vlrl.evaluation.records import CATEGORY_FIELDS


def _k_list(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--k takes comma-separated integers like 1,4,8, got {text!r}"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder (Hugging Face format)")
    p.add_argument("--data", required=True, help="benchmark file in the benchmark's own layout")
    add_image_arguments(p)
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip (and log) rows that cannot be evaluated instead of stopping; they leave the denominator",
    )
    p.add_argument(
        "--benchmark",
        default="math_verify",
        choices=sorted(BENCHMARKS),
        help="answer conventions and file layout (default: math_verify, the training reward on vlrl data)",
    )
    p.add_argument("--template", default="think_answer", choices=sorted(TEMPLATES), help="prompt template")
    p.add_argument("--n", type=int, default=1, help="completions per question (1: greedy)")
    p.add_argument("--k", type=_k_list, default=None, help="pass@k values, e.g. 1,4 (default: 1 and n)")
    p.add_argument("--temperature", type=float, default=None, help="default: 0 when n=1, else 1.0")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=16, help="prompts generated at once")
    p.add_argument("--seed", type=int, default=0, help="sampling seed when temperature > 0")
    p.add_argument(
        "--category-field",
        default=None,
        help=f"sample field for the per-category table (default: first set of {', '.join(CATEGORY_FIELDS)})",
    )
    p.add_argument("--out", default=None, help="predictions JSONL (one line per question)")
    p.add_argument("--summary-out", default=None, help="also write the summary as JSON here")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first L questions")
    p.add_argument("--device", default="auto", help="torch device (auto: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    from vlrl.evaluation.runner import evaluate_model, format_summary

    summary = evaluate_model(
        args.model,
        args.data,
        benchmark=args.benchmark,
        limit=args.limit,
        device=args.device,
        dtype=args.dtype,
        template=args.template,
        n=args.n,
        k=args.k,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        category_field=args.category_field,
        out=args.out,
        image_root=args.image_root,
        max_image_pixels=args.max_image_pixels,
        skip_invalid=args.skip_invalid,
        progress=not args.no_progress,
    )
    print(format_summary(summary))
    if args.out:
        print(f"predictions written to {args.out}")
    if args.summary_out:
        with open(args.summary_out, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return 0
