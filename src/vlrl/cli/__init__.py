"""The `vlrl` command: one module per subcommand, each with `add_arguments` and `run`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

# name -> (module under vlrl.cli, one-line help). Modules are imported only when their command
# runs, so `vlrl --help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "the CPU demo: tiny model, cold-start SFT, GRPO, before/after table and report"),
    "tiny-model": ("tiny_model", "build a tiny random VLM (model, tokenizer, processor) offline"),
    "synth": ("synth", "write a synthetic visual-reasoning dataset (PIL images, JSONL)"),
    "sft": ("sft", "supervised fine-tuning on chain-of-thought targets (the cold start before RL)"),
    "train": ("train", "run R1-style RL (GRPO, Dr.GRPO, DAPO, GSPO, RLOO, REINFORCE++) from a config"),
    "merge": ("merge", "merge a LoRA checkpoint into its base model (plain transformers checkpoint)"),
    "data": ("data", "load a data file and report what is valid (any supported layout)"),
    "config": ("config", "print a config file resolved with overrides, or the defaults"),
    "eval": ("eval", "evaluate a checkpoint on a benchmark (MathVista, MMMU, MathVerse): accuracy, pass@k"),
    "serve": ("serve", "serve a checkpoint with an OpenAI-compatible chat API (/v1/chat/completions)"),
    "coldstart": ("coldstart", "build cold-start SFT data by Vision-R1 modality bridging (VLM + reasoner)"),
    "report": ("report", "write a run folder's metrics, alarms and rollouts as one offline HTML page"),
}


def train_and_report(trainer, output_dir: str, final: Callable[[dict], str]) -> int:
    """Run an SFT or RL trainer as `vlrl sft` / `vlrl train` do: rank 0 alone prints the data
    load reports, then `final(last step's metrics)` and where the run is (one report per job)."""
    main = trainer.world.is_main
    for line in trainer.load_reports if main else ():
        print(line)
    history = trainer.train()
    if not main:
        return 0
    if history:
        print(f"final step {history[-1]['step']}: {final(history[-1])}")
    print(f"run directory: {output_dir} (checkpoints: {output_dir}/checkpoints)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlrl", description="R1-style reinforcement learning for VLMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(f"vlrl.cli.{module}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # vlrl shows its own progress; per-shard bars are noise
    module = importlib.import_module(f"vlrl.cli.{args._module}")
    import torch

    from vlrl.distributed import CollectiveTimeout, shutdown

    try:
        return module.run(args) or 0
    except CollectiveTimeout as exc:
        print(f"vlrl {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except torch.distributed.DistError as exc:
        # A collective inside FSDP2's own forward or backward: the same cause, a lost peer rank.
        print(
            f"vlrl {args.command}: error: a distributed collective failed ({exc}). Another rank probably "
            "died or hangs (see its log); resume from the last checkpoint with train.resume=auto.",
            file=sys.stderr,
        )
        return 1
    except (ValueError, FileNotFoundError) as exc:
        # User errors (bad config key, bad data row, missing folder) already name the culprit;
        # a traceback from deep inside a library would only hide it.
        print(f"vlrl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()  # a torchrun job leaves its process group cleanly
