"""`vlrl data FILE [--format F] [--skip-invalid] [--image-root DIR] [--model DIR --template T --max-prompt-length N]`.

Loads a data file exactly as training would and prints what was loaded and what was not, so a
dataset can be checked before a long run starts.
"""

from __future__ import annotations

import argparse

from vlrl.data import FORMATS, load_samples
from vlrl.data.images import DEFAULT_MAX_PIXELS
from vlrl.data.prompts import get_template


def _pixels(text: str) -> int | None:
    """A pixel limit: a positive integer, or "none" for no limit."""
    if text.lower() == "none":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"takes a positive number of pixels or 'none', got {text!r}")
    return int(text)


def add_image_arguments(p: argparse.ArgumentParser) -> None:
    """Where images are found and how large they may be (data.image_root, data.max_image_pixels)."""
    p.add_argument(
        "--image-root",
        default=None,
        help="folder that relative image paths are relative to (default: the data file's folder)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=_pixels,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest image accepted, width x height, or 'none' (default {DEFAULT_MAX_PIXELS})",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="JSONL / JSON / parquet / csv file or a datasets save_to_disk folder")
    p.add_argument("--format", default="auto", choices=["auto", *sorted(FORMATS)])
    p.add_argument("--skip-invalid", action="store_true", help="skip and count bad rows instead of stopping")
    add_image_arguments(p)
    p.add_argument("--model", help="checkpoint folder: also check prompt lengths in its tokens")
    p.add_argument("--template", default="think_answer", help="prompt template for the length check")
    p.add_argument("--max-prompt-length", type=int, default=1024)


def run(args: argparse.Namespace) -> int:
    prompt_length = None
    if args.model:
        from vlrl.models.loading import load_model

        adapter = load_model(args.model, max_image_pixels=args.max_image_pixels).adapter
        template = get_template(args.template)
        prompt_length = lambda sample: adapter.prompt_length(sample, template)  # noqa: E731
    samples, report = load_samples(
        args.file,
        format=args.format,
        skip_invalid=args.skip_invalid,
        max_prompt_length=args.max_prompt_length if prompt_length else None,
        prompt_length=prompt_length,
        image_root=args.image_root,
        max_image_pixels=args.max_image_pixels,
    )
    print(report.summary())
    for error in report.skipped:
        print(f"  skipped: {error}")
    tasks: dict[str, int] = {}
    for s in samples:
        tasks[s.task or "-"] = tasks.get(s.task or "-", 0) + 1
    print("tasks: " + ", ".join(f"{t} {n}" for t, n in sorted(tasks.items())))
    return 0
