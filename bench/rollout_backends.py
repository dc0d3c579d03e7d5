"""Benchmark: rollout samples/s of the HF backend versus the colocated vLLM backend, and vLLM's weight-sync time.

Builds a tiny Idefics3 (size "tiny"; Idefics3 because vLLM's CPU build runs its vision tower without
torchvision) in a temporary folder, encodes P prompts with one 112x112 synthetic image each, and
samples G completions of up to `--tokens` tokens. The stop token is a vision placeholder, which is
never sampled, so HF rows all run to the limit; vLLM also stops at the model's EOS, which the random
tiny model draws about once in 450 tokens. Prints samples/s and generated tokens/s (median of
interleaved runs after a warm-up), their ratios, and the time of `sync_weights` (all weights into
the engine).

    .venv-vllm/bin/python bench/rollout_backends.py            # needs vLLM (README, 'Rollout backends')
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rollout_prefix import make_samples

from vlrl.data.prompts import TEMPLATES
from vlrl.models.loading import load_model
from vlrl.models.tiny.factory import build_tiny_model
from vlrl.rollout import SamplingParams, make_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", type=float, default=0.2, help="vLLM's share of (CPU or GPU) memory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model("idefics3", Path(tmp) / "model", size="tiny")
        lm = load_model(path)
        samples = make_samples(Path(tmp))[: args.prompts]
        prompts = [lm.adapter.encode(s, TEMPLATES["answer_only"]) for s in samples]
        never = lm.adapter.placeholder_token_ids()[:1]
        backends = {
            "hf": make_backend("hf", lm.model, lm.adapter, stop_token_ids=never),
            "vllm": make_backend(
                "vllm", lm.model, lm.adapter, model_path=str(path), gpu_memory_utilization=args.memory,
                stop_token_ids=never,
            ),
        }  # fmt: skip
        params = SamplingParams(args.group, args.tokens, seed=0)
        rates: dict[str, list[float]] = {name: [] for name in backends}
        token_rates: dict[str, list[float]] = {name: [] for name in backends}
        for run in range(args.runs + 1):
            for name, backend in backends.items():
                start = time.perf_counter()
                groups = backend.generate(prompts, params)
                seconds = time.perf_counter() - start
                if run:  # run 0 warms up
                    rates[name].append(args.prompts * args.group / seconds)
                    token_rates[name].append(sum(len(c.token_ids) for g in groups for c in g) / seconds)
        syncs = []
        for _ in range(args.runs):
            start = time.perf_counter()
            backends["vllm"].sync_weights(lm.model)
            syncs.append(time.perf_counter() - start)
    params_m = sum(p.numel() for p in lm.model.parameters()) / 1e6
    print(
        f"tiny Idefics3 ({params_m:.2f}M parameters), {args.prompts} prompts x G={args.group}, {args.tokens} tokens"
    )
    for label, table in (("rollout samples/s", rates), ("generated tokens/s", token_rates)):
        for name, values in table.items():
            print(
                f"{name:5s} {label}: {statistics.median(values):9.1f} [{min(values):.1f}-{max(values):.1f}]"
            )
        print(f"      vllm / hf: x{statistics.median(table['vllm']) / statistics.median(table['hf']):.2f}")
    print(f"vllm weight sync: {statistics.median(syncs) * 1000:.1f} ms (median of {len(syncs)})")


if __name__ == "__main__":
    main()
