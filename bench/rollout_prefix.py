"""Benchmark: shared-prefix rollouts versus repeating each prompt G times.

Builds a tiny Qwen2-VL (size "tiny") in a temporary folder, encodes P = 16 prompts with one
112x112 synthetic image each, and samples G = 8 completions of up to 32 tokens per prompt with
1. the HF backend (prefill and vision once per prompt, KV cache repeated G times);
2. the same backend fed each prompt G times with group_size 1 (prefill of P*G rows);
3. `model.generate(num_return_sequences=G, do_sample=True)` (copies the inputs G times).
Prints samples/s (median of 3 interleaved runs after a warm-up) and the ratios. Runs on CUDA when present.

    python bench/rollout_prefix.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from vlrl.data.prompts import TEMPLATES
from vlrl.data.sample import Sample
from vlrl.models.batching import collate
from vlrl.models.loading import load_model
from vlrl.models.tiny.factory import build_tiny_model
from vlrl.rollout import HFRolloutBackend, SamplingParams

P, G, MAX_NEW, RUNS = 16, 8, 32, 3
COLOURS = ("red", "blue", "green", "orange")


def make_samples(folder: Path) -> list[Sample]:
    """P prompts, each with its own 112x112 image of 1-4 circles."""
    samples = []
    for i in range(P):
        image = Image.new("RGB", (112, 112), "white")
        draw = ImageDraw.Draw(image)
        for j in range(i % 4 + 1):
            draw.ellipse((8 + 24 * j, 10 + 5 * i, 28 + 24 * j, 30 + 5 * i), fill=COLOURS[j])
        path = folder / f"image_{i}.png"
        image.save(path)
        question = f"How many circles are in picture {i}?" + " Count carefully." * (i % 3)
        samples.append(Sample(id=str(i), question=question, answer=i % 4 + 1, images=[path]))
    return samples


def median_seconds(fns: dict[str, Callable[[int], object]]) -> dict[str, float]:
    """Median wall time of `RUNS` calls fn(seed) of each fn, after one warm-up call each.

    Runs are interleaved (round r calls every fn once) so that a burst of load from other
    processes on the machine hits all methods alike.
    """
    for fn in fns.values():
        fn(RUNS)  # warm-up with a seed the timed runs do not use
    times: dict[str, list[float]] = {name: [] for name in fns}
    for seed in range(RUNS):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(seed)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lm = load_model(build_tiny_model("qwen2_vl", folder / "model", size="tiny"), device=device)
        prompts = [lm.adapter.encode(s, TEMPLATES["answer_only"]) for s in make_samples(folder)]
    backend = HFRolloutBackend(lm.model, lm.adapter)
    repeated = [p for p in prompts for _ in range(G)]
    batch = {k: v.to(device) for k, v in collate(prompts, lm.adapter.tokenizer.pad_token_id, "left").items()}

    def params(group: int, seed: int) -> SamplingParams:
        return SamplingParams(group_size=group, max_new_tokens=MAX_NEW, seed=seed)

    def hf_generate(seed: int) -> None:
        torch.manual_seed(seed)
        with torch.no_grad():
            lm.model.generate(**batch, do_sample=True, num_return_sequences=G, max_new_tokens=MAX_NEW)

    timings = median_seconds(
        {
            "shared prefix (HF backend)": lambda s: backend.generate(prompts, params(G, s)),
            "prompt repeated G times": lambda s: backend.generate(repeated, params(1, s)),
            "model.generate(num_return_sequences=G)": hf_generate,
        }
    )
    print(f"qwen2_vl tiny on {device}: P={P} prompts x G={G}, max_new_tokens={MAX_NEW}, median of {RUNS}")
    shared = timings["shared prefix (HF backend)"]
    for name, seconds in timings.items():
        print(
            f"  {name:<40} {P * G / seconds:8.1f} samples/s  ({seconds:.3f} s, shared prefix is x{seconds / shared:.2f} faster)"
        )


if __name__ == "__main__":
    main()
