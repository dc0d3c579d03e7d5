"""GPU step-time harness: vlrl's GRPO step on real-size Qwen2.5-VL and Qwen3-VL-MoE shapes, against
its physical floor.

Builds an architecture with random weights from a config in this file (Qwen2.5-VL-3B or 7B,
Qwen3-VL-30B-A3B, or toy ones for CPUs; nothing is downloaded) with a small BPE tokenizer carrying
Qwen's special tokens (embedding rows beyond it are never sampled: `adapter.blocked_token_ids`),
saves it to a temporary folder (bf16 on GPU) and trains `--steps` GRPO steps on a fixed synthetic
workload: P prompts of one noise image (`--image-tokens` tokens, 600 by default: 2400 14x14 patches,
a 700x672 image, for Qwen2.5-VL; 16x16 patches, 800x768, for Qwen3-VL) and a short question, G
samples of exactly `--response-tokens` tokens, rewards format + accuracy (all zero for a random
model: zero advantages, the update still runs). The checkpoint's EOS is a vision placeholder, which
the sampler never draws, so every completion has the same length and runs are comparable.

Printed, as medians over the steps after the first (a warm-up): vlrl's verl-style phase times
(timing_s/gen, reward, old_ref, update, step; vlrl's own clocks, not synchronised with the GPU, so
queued kernels may be counted in a later phase of the same step), the step's wall time with the
device synchronised, tokens/s, samples/s, peak memory, and the wall time as a multiple of the
physical floor of bench/floor.py (FLOPs at the GPU's peak bf16 rate + decode bytes at its HBM
bandwidth; its docstring has the formula). `--trl` runs TRL's GRPOTrainer on the same checkpoint,
data and settings when TRL is installed, against the same floor.

Mixture-of-Experts shapes (`30b-a3b`: Qwen3-VL-30B-A3B's published config, 48 layers of 128 experts
with 8 routed per token, 31.1B parameters; `moe-toy` for CPUs) run once per expert kernel of
`--experts-implementation` (default: grouped_mm and eager; `model.experts_implementation`) on the
same checkpoint, and print each kernel's step time, tokens/s and peak memory side by side.
`--layers N` keeps the first N language layers (the vision tower stays whole), so that the 30B model
fits one GPU: with 4 layers it has 3.65B parameters (2.42B of them experts), 7.3 GB of bf16
weights, ~27 GiB with gradients and AdamW state (8 bytes a parameter), activations aside. The floor
counts the weights that multiply a token: for an MoE, N_lm is the active language weights (routers,
attention and top_k / experts of the routed experts), so the floor stays a lower bound (a decode step
reads at least those).

    python bench/gpu_step.py --shape 3b --steps 3 --prompts 4 --group 8 --response-tokens 256
    python bench/gpu_step.py --shape 7b --grad-ckpt --micro-batch-tokens 4096   # 80 GB GPUs
    python bench/gpu_step.py --shape toy --image-tokens 16 --response-tokens 32   # CPU smoke run
    python bench/gpu_step.py --shape 30b-a3b --layers 4 --experts-implementation grouped_mm eager
    python bench/gpu_step.py --shape moe-toy --image-tokens 16 --response-tokens 32   # CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from floor import Device, ModelCounts, StepShape, device_for, floor_seconds
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    GenerationConfig,
    PretrainedConfig,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen3VLMoeConfig,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlrl.config import TrainConfig, load_config
from vlrl.models.processors import Qwen2_5_VLImageOnlyProcessor, Qwen3VLImageOnlyProcessor
from vlrl.models.tiny.factory import QWEN_SPECIALS, QWEN_TEMPLATE, _qwen_ids, default_corpus
from vlrl.models.tiny.tokenizer import train_bpe

PATCH, MERGE = 14, 2
CELL = PATCH * MERGE  # pixels per image-token side: one token per 28x28 area after the 2x2 merge
# transformers' experts kernels (model.experts_implementation)
KERNELS = ("grouped_mm", "batched_mm", "eager")
NEVER_SAMPLED_EOS = "<|video_pad|>"  # a vision placeholder: blocked in sampling, so rows never stop
QUESTION = "How many different colours does this picture show? Count carefully."
PHASES = ("gen", "reward", "old_ref", "update", "step")


@dataclass(frozen=True)
class Family:
    """What differs between the architectures built here: config class, patch size, processor."""

    config: type[PretrainedConfig]
    patch: int
    processor: type[ProcessorMixin]
    pixel_norm: dict  # image processor mean / std when not the CLIP values

    @property
    def cell(self) -> int:
        """Pixels per image-token side, after the 2x2 merge."""
        return self.patch * MERGE


FAMILIES = {
    "qwen2_5_vl": Family(Qwen2_5_VLConfig, 14, Qwen2_5_VLImageOnlyProcessor, {}),
    # Qwen3-VL normalises pixels to [-1, 1].
    "qwen3_vl_moe": Family(
        Qwen3VLMoeConfig, 16, Qwen3VLImageOnlyProcessor, {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    ),
}


@dataclass(frozen=True)
class Shape:
    """An architecture: text and vision config fields; vocab None = the tokenizer's size."""

    text: dict
    vision: dict
    vocab: int | None
    tie: bool
    family: str = "qwen2_5_vl"

    @property
    def moe(self) -> bool:
        return "num_experts" in self.text


QWEN2_5_VL_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    patch_size=PATCH,
    spatial_merge_size=MERGE,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
)
QWEN_ROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}  # head dim 128
# The published Qwen/Qwen3-VL-30B-A3B-Instruct config.json values (tests/models/families/test_qwen3_vl.py
# checks the same architecture's parameter counts).
QWEN3_VL_VISION = dict(
    depth=27,
    hidden_size=1152,
    intermediate_size=4304,
    num_heads=16,
    patch_size=16,
    spatial_merge_size=MERGE,
    temporal_patch_size=2,
    num_position_embeddings=2304,
    deepstack_visual_indexes=[8, 16, 24],  # added to language layers 0, 1, 2
)
QWEN3_VL_30B_A3B_TEXT = dict(
    hidden_size=2048,
    intermediate_size=6144,  # unused: every layer is sparse
    num_hidden_layers=48,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=128,
    moe_intermediate_size=768,
    num_experts=128,
    num_experts_per_tok=8,
    decoder_sparse_step=1,
    norm_topk_prob=True,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 5e6,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    },
)

# The published Qwen/Qwen2.5-VL-{3B,7B}-Instruct config.json values.
SHAPES = {
    "toy": Shape(
        text=dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 6, 6]},
        ),
        vision=dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=128,
            patch_size=PATCH,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
        ),
        vocab=None,
        tie=True,
    ),
    "3b": Shape(
        text=dict(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            rope_parameters=QWEN_ROPE,
        ),
        vision={**QWEN2_5_VL_VISION, "out_hidden_size": 2048},
        vocab=151936,
        tie=True,
    ),
    "7b": Shape(
        text=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            rope_parameters=QWEN_ROPE,
        ),
        vision={**QWEN2_5_VL_VISION, "out_hidden_size": 3584},
        vocab=152064,
        tie=False,
    ),
    "30b-a3b": Shape(
        text=QWEN3_VL_30B_A3B_TEXT,
        vision={**QWEN3_VL_VISION, "out_hidden_size": 2048},
        vocab=151936,
        tie=False,
        family="qwen3_vl_moe",
    ),
    "moe-toy": Shape(
        text=dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            moe_intermediate_size=64,
            num_experts=8,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e4,
                "mrope_section": [6, 5, 5],
                "mrope_interleaved": True,
            },
        ),
        vision=dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=128,
            patch_size=16,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
            num_position_embeddings=36,
            deepstack_visual_indexes=[0, 1],
        ),
        vocab=None,
        tie=False,
        family="qwen3_vl_moe",
    ),
}


def with_layers(shape: Shape, layers: int | None) -> Shape:
    """`shape` with its first `layers` language layers (None: all of them)."""
    if layers is None:
        return shape
    return replace(shape, text={**shape.text, "num_hidden_layers": layers})


# ---- checkpoint and workload -------------------------------------------------------------------
def image_size(tokens: int, cell: int = CELL) -> tuple[int, int]:
    """(width, height) in pixels of the most nearly square image of exactly `tokens` image tokens
    of `cell` x `cell` pixels each."""
    rows = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
    return (tokens // rows) * cell, rows * cell


def model_config(shape: Shape, tok) -> PretrainedConfig:
    """The `shape` architecture with the special-token ids of the tokenizer `tok`."""
    text = dict(
        shape.text,
        vocab_size=shape.vocab or -(-len(tok) // 64) * 64,
        rms_norm_eps=1e-6,
        max_position_embeddings=128000,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return FAMILIES[shape.family].config(
        text_config=text, vision_config=shape.vision, tie_word_embeddings=shape.tie, **_qwen_ids(tok)
    )


def build_checkpoint(shape: Shape, out: Path, image_tokens: int, device: torch.device) -> Path:
    """Save a random-weight `shape` model (bf16 on GPU, fp32 on CPU) with tokenizer and processor.

    The processor's pixel bounds keep an image of `image_tokens` tokens at its size.
    """
    # All the merges the corpus has (~800 tokens), so the prompt's text is about as many tokens as
    # with Qwen's own tokenizer.
    tok = train_bpe(default_corpus(), QWEN_SPECIALS, vocab_size=2000, eos_token=NEVER_SAMPLED_EOS)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with device:  # initialise in place: a 7B model's random init takes minutes on a CPU
        model = AutoModelForImageTextToText.from_config(model_config(shape, tok), dtype=dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False
    )
    model.save_pretrained(out)
    del model
    family = FAMILIES[shape.family]
    pixels = image_tokens * family.cell**2
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=family.patch,
        merge_size=MERGE,
        temporal_patch_size=2,
        size={"shortest_edge": min(4 * family.cell**2, pixels), "longest_edge": pixels},
        **family.pixel_norm,
    )
    processor = family.processor(image_processor=image_processor, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    processor.save_pretrained(out)
    return out


def write_workload(folder: Path, rows: int, image_tokens: int, cell: int = CELL) -> Path:
    """A canonical JSONL of `rows` identical prompts (one noise image each, of `cell`-pixel image
    tokens); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = image_size(image_tokens, cell)
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "noise.png")
    path = folder / "train.jsonl"
    lines = [
        json.dumps({"id": f"w{i}", "question": QUESTION, "answer": "3", "images": ["noise.png"]})
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- vlrl --------------------------------------------------------------------------------------
def train_config(
    args, model: Path, data: Path, out: Path, device: torch.device, kernel: str | None = None
) -> TrainConfig:
    kernel_setting = [f"model.experts_implementation={kernel}"] if kernel else []
    return load_config(
        None,
        [
            f"model.path={model}",
            f"model.dtype={'bfloat16' if device.type == 'cuda' else 'float32'}",
            f"model.gradient_checkpointing={str(args.grad_ckpt).lower()}",
            f"data.train={data}",
            f"data.max_prompt_length={args.image_tokens + 512}",
            f"rollout.group_size={args.group}",
            f"rollout.prompts_per_step={args.prompts}",
            f"rollout.max_new_tokens={args.response_tokens}",
            "rollout.temperature=1.0",
            "reward.functions=[format, accuracy]",
            f"algo.kl_beta={args.kl_beta}",
            f"algo.ppo_epochs={args.ppo_epochs}",
            # One step more than is run: the last step of a run saves a checkpoint, not timed here.
            f"train.steps={args.steps + 1}",
            "train.lr=1e-6",
            "train.lr_schedule=constant",
            f"train.micro_batch_tokens={args.micro_batch_tokens}",
            f"train.device={device}",
            f"train.output_dir={out}",
            "logging.jsonl=false",
            "logging.progress=false",
            "logging.rollouts_every=0",
            *kernel_setting,
        ],
        schema=TrainConfig,
    )


def model_counts(model: torch.nn.Module, adapter) -> ModelCounts:
    """N_lm, N_vis, N_conn, W and kv bytes of `model` as bench/floor.py defines them.

    For an MoE, N_lm and W count the weights one token multiplies: every group but vision and
    connector (language, router, ...), with the routed experts at top_k / experts of their size.
    """
    groups = {g: sum(p.numel() for _, p in ps) for g, ps in adapter.parameter_groups(model).items()}
    text = model.config.text_config
    experts = groups.pop("experts", 0)
    if experts:
        experts = experts * text.num_experts_per_tok // text.num_experts
    embedding = model.get_input_embeddings().weight
    tied = embedding is model.get_output_embeddings().weight
    language = sum(n for g, n in groups.items() if g not in ("vision", "connector")) + experts
    language -= 0 if tied else embedding.numel()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    width = embedding.element_size()
    kv = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * width
    return ModelCounts(language, groups["vision"], groups["connector"], language * width, kv)


def step_shape(trainer, args) -> StepShape:
    """The workload in the floor's terms, read off one encoded prompt (all prompts are alike)."""
    encoded = trainer.adapter.encode(trainer.train_samples[0], trainer.template)
    a = trainer.cfg.algo
    return StepShape(
        prompts=args.prompts,
        group=args.group,
        prompt_tokens=encoded.length,
        image_tokens=int((encoded.tokens["input_ids"] == trainer.model.config.image_token_id).sum()),
        patches=int(encoded.vision["pixel_values"].shape[0]),
        response_tokens=args.response_tokens,
        updates=a.ppo_epochs,
        extra_forwards=int(a.ppo_epochs > 1) + int(a.kl_beta > 0),
    )


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that the clock read next counts it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_vlrl(
    args, model: Path, data: Path, out: Path, device: torch.device, kernel: str | None = None
) -> dict:
    """Train `args.steps` steps one at a time, each timed with the device synchronised, with the
    experts kernel `kernel` (None: transformers' default; dense models ignore it).

    Returns {"history": per-step metrics, "wall": per-step seconds, "counts", "shape", "memory"}.
    """
    from vlrl.training.grpo import GRPOTrainer

    trainer = GRPOTrainer(train_config(args, model, data, out, device, kernel))
    reset_peak_memory(device)
    history, wall = [], []
    for step in range(1, args.steps + 1):
        synchronize(device)
        t0 = time.perf_counter()
        history += trainer.train(until=step)
        synchronize(device)
        wall.append(time.perf_counter() - t0)
    result = {
        "history": history,
        "wall": wall,
        "counts": model_counts(trainer.model, trainer.adapter),
        "shape": step_shape(trainer, args),
        "memory": peak_memory(device),
    }
    del trainer
    release_memory(device)
    return result


# ---- memory and the floor's device -------------------------------------------------------------
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def release_memory(device: torch.device) -> None:
    """Free a finished run's tensors (trainers hold reference cycles) before the next run measures."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, what was measured): the GPU's allocator peak, or on a CPU the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20, "CPU peak RSS of the whole process (not a GPU number)"


def floor_device(args, device: torch.device) -> tuple[Device, str]:
    """The peaks the floor uses and a label saying where they come from."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    found = device_for(name) if device.type == "cuda" else None
    base = found or device_for("H100")
    label = (
        f"{base.name} table entry"
        if found
        else f"ASSUMED {base.name} SXM numbers ({name} is not in the table)"
    )
    if args.peak_tflops or args.hbm_gbps:
        label += ", overridden on the command line"
    chosen = Device(
        base.name,
        args.peak_tflops * 1e12 if args.peak_tflops else base.peak_flops,
        args.hbm_gbps * 1e9 if args.hbm_gbps else base.hbm_bytes_per_s,
    )
    return (
        chosen,
        f"{name}; floor at {chosen.peak_flops / 1e12:.0f} TFLOP/s, {chosen.hbm_bytes_per_s / 1e9:.0f} GB/s: {label}",
    )


# ---- TRL ---------------------------------------------------------------------------------------
def run_trl(args, model: Path, data: Path, out: Path, device: torch.device) -> dict:
    """TRL's GRPOTrainer on the same checkpoint, rows and settings (one group per micro-batch, P of
    them accumulated per step); returns the same keys as `run_vlrl` minus the phase timings."""
    import trl
    from transformers import PrinterCallback, TrainerCallback
    from trl_vs_vlrl import trl_config, trl_dataset, trl_rewards

    from vlrl.models.adapters import adapter_class
    from vlrl.models.loading import load_processor

    class StepClock(TrainerCallback):
        """Synchronised wall time of each optimizer step (generation included) and its mean length."""

        def __init__(self):
            self.wall, self.lengths = [], []

        def on_step_begin(self, *_, **__):
            synchronize(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            synchronize(device)
            self.wall.append(time.perf_counter() - self.t0)

        def on_log(self, *_, logs=None, **__):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    config = json.loads((model / "config.json").read_text())
    processor = load_processor(model)
    adapter = adapter_class(config["model_type"])(processor)
    cuda = device.type == "cuda"
    settings = trl_config(
        out,
        use_cpu=not cuda,
        bf16=cuda,
        model_init_kwargs={"dtype": "bfloat16" if cuda else "float32"},
        gradient_checkpointing=args.grad_ckpt,
        per_device_train_batch_size=args.group,
        gradient_accumulation_steps=args.prompts,
        num_generations=args.group,
        max_completion_length=args.response_tokens,
        # As vlrl's sampler: never the vision placeholders (the EOS among them) nor rows past the tokenizer.
        generation_kwargs={"suppress_tokens": adapter.blocked_token_ids(config["text_config"]["vocab_size"])},
        learning_rate=1e-6,
        beta=args.kl_beta,
        num_iterations=args.ppo_epochs,
        max_steps=args.steps,
        seed=0,
    )
    clock = StepClock()
    trainer = trl.GRPOTrainer(
        model=str(model),
        reward_funcs=trl_rewards(("format", "accuracy")),
        args=settings,
        train_dataset=trl_dataset(data, system_prompt=None),
        processing_class=processor,
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)  # its per-step dicts would bury the table
    reset_peak_memory(device)
    trainer.train()
    result = {
        "history": [{"response_length/mean": n} for n in clock.lengths],
        "wall": clock.wall,
        "memory": peak_memory(device),
    }
    del trainer
    release_memory(device)
    return result


# ---- summary -----------------------------------------------------------------------------------
def summarise(history: list[dict], wall: list[float], shape: StepShape, floor: dict[str, float]) -> dict:
    """Medians over the steps after the first: phase seconds (those logged), wall seconds,
    throughput and the floor multiple.

    Tokens per step are prompt + response tokens of the B sequences (verl's perf/total_num_tokens).
    """
    timed = history[1:]
    rows = shape.prompts * shape.group
    out = {
        f"timing_s/{p}": statistics.median(h[f"timing_s/{p}"] for h in timed)
        for p in PHASES
        if f"timing_s/{p}" in timed[0]
    }
    out["wall_s"] = statistics.median(wall[1:])
    out["response_length"] = statistics.median(h["response_length/mean"] for h in timed)
    out["tokens_per_s"] = rows * (shape.prompt_tokens + out["response_length"]) / out["wall_s"]
    out["response_tokens_per_s"] = rows * out["response_length"] / out["wall_s"]
    out["samples_per_s"] = rows / out["wall_s"]
    out["floor_s"] = floor["total"]
    out["floor_multiple"] = out["wall_s"] / floor["total"]
    return out


def print_report(title: str, s: dict, memory: tuple[float, str], n_timed: int) -> None:
    print(f"\n{title}: medians of {n_timed} step(s) after a warm-up step")
    for p in PHASES:
        if f"timing_s/{p}" in s:
            print(f"  {'timing_s/' + p:24}{s[f'timing_s/{p}']:10.3f} s")
    print(f"  {'wall (synchronised)':24}{s['wall_s']:10.3f} s")
    print(f"  {'tokens/s':24}{s['tokens_per_s']:10.1f}   (prompt + response)")
    print(
        f"  {'response tokens/s':24}{s['response_tokens_per_s']:10.1f}   (mean length {s['response_length']:.1f})"
    )
    print(f"  {'samples/s':24}{s['samples_per_s']:10.2f}")
    print(f"  {'peak memory':24}{memory[0]:10.2f} GiB ({memory[1]})")
    print(f"  {'step / floor':24}{s['floor_multiple']:10.1f} x")


def print_floor(counts: ModelCounts, shape: StepShape, floor: dict[str, float], device_label: str) -> None:
    print(f"device: {device_label}")
    print(
        f"model: N_lm {counts.language:.3e}, N_vis {counts.vision:.3e}, N_conn {counts.connector:.3e}, "
        f"W {counts.weight_bytes:.3e} B, KV {counts.kv_bytes_per_token} B/token"
    )
    print(
        f"workload: {shape.prompts} prompts x G={shape.group}, prompt {shape.prompt_tokens} tokens "
        f"({shape.image_tokens} image tokens, {shape.patches} patches), {shape.response_tokens} response tokens, "
        f"{shape.updates} update(s), {shape.extra_forwards} extra forward(s)"
    )
    parts = ", ".join(f"{k} {v:.3g}" for k, v in floor.items() if k != "total")
    print(f"floor: {floor['total']:.3g} s ({parts})")


# ---- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="toy")
    p.add_argument("--layers", type=int, help="keep the first N language layers (default: the shape's all)")
    p.add_argument(
        "--experts-implementation",
        nargs="+",
        choices=KERNELS,
        help="MoE shapes: one run per experts kernel, on the same checkpoint (default: grouped_mm eager)",
    )
    p.add_argument("--steps", type=int, default=3, help="steps run; the first is a warm-up (at least 2)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--response-tokens", type=int, default=256)
    p.add_argument("--image-tokens", type=int, default=600)
    p.add_argument("--micro-batch-tokens", type=int, default=8192)
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (7B on 80 GB)")
    p.add_argument("--ppo-epochs", type=int, default=1, help=">1 adds the old log-probs pass")
    p.add_argument("--kl-beta", type=float, default=0.0, help=">0 adds the reference model's pass")
    p.add_argument("--peak-tflops", type=float, help="override the device table's bf16 TFLOP/s")
    p.add_argument("--hbm-gbps", type=float, help="override the device table's HBM GB/s")
    p.add_argument("--device", default="auto", help="cuda, cpu, or auto")
    p.add_argument("--trl", action="store_true", help="also run TRL's GRPOTrainer (needs trl)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be at least 2: the first step is a warm-up and is not counted")
    if args.layers is not None and args.layers < 1:
        p.error("--layers must be at least 1")
    moe = SHAPES[args.shape].moe
    if args.experts_implementation and not moe:
        moe_shapes = ", ".join(n for n, s in SHAPES.items() if s.moe)
        p.error(
            f"--experts-implementation needs a Mixture-of-Experts shape ({moe_shapes}); {args.shape} is dense"
        )
    if moe and not args.experts_implementation:
        args.experts_implementation = ["grouped_mm", "eager"]
    return args


def run_kernel(args, model: Path, data: Path, out: Path, device: torch.device, kernel: str | None) -> dict:
    """`run_vlrl`, or {"error": ...} when the device runs out of memory: the other kernels still run
    (on a lent GPU's one try, a partial table beats none)."""
    try:
        return run_vlrl(args, model, data, out, device, kernel)
    except torch.OutOfMemoryError as error:
        release_memory(device)
        return {"error": f"out of memory: {str(error).splitlines()[0]}"}


def print_kernels(kernels: dict[str, dict]) -> None:
    """The experts kernels side by side: wall time, tokens/s, peak memory, wall over the first's."""
    first = next((s["wall_s"] for s in kernels.values() if "wall_s" in s), None)
    print(f"\n{'experts kernel':16}{'wall s':>10}{'tokens/s':>12}{'peak GiB':>10}{'wall / first':>14}")
    for kernel, s in kernels.items():
        if "error" in s:
            print(f"{kernel:16}  {s['error']}")
            continue
        gib = s["peak_memory"]["gib"]
        print(
            f"{kernel:16}{s['wall_s']:10.3f}{s['tokens_per_s']:12.1f}{gib:10.2f}{s['wall_s'] / first:13.2f}x"
        )


def main(argv: list[str] | None = None) -> dict:
    """Run the harness; returns {"vlrl": summary (an MoE's: the first kernel's), "kernels": kernel ->
    summary (MoE shapes), "trl": summary (with --trl), "shape": StepShape, "floor": seconds by phase,
    "counts": the floor's ModelCounts}."""
    args = parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    shape = with_layers(SHAPES[args.shape], args.layers)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = build_checkpoint(shape, tmp / "model", args.image_tokens, device)
        data = write_workload(tmp / "data", args.prompts, args.image_tokens, FAMILIES[shape.family].cell)
        layers = f", {shape.text['num_hidden_layers']} language layers" if args.layers else ""
        print(
            f"\nshape {args.shape}{layers}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        )
        floor = None
        for kernel in args.experts_implementation or [None]:
            run = run_kernel(args, model, data, tmp / f"vlrl_{kernel}", device, kernel)
            if "error" in run:
                print(f"\nvlrl, experts kernel {kernel}: {run['error']}")
                results.setdefault("kernels", {})[kernel] = run
                save_json(args, results)
                continue
            if floor is None:
                floor_dev, device_label = floor_device(args, device)
                floor = floor_seconds(run["counts"], run["shape"], floor_dev)
                print_floor(run["counts"], run["shape"], floor, device_label)
                results["shape"], results["floor"], results["counts"] = run["shape"], floor, run["counts"]
            summary = summarise(run["history"], run["wall"], run["shape"], floor)
            summary["peak_memory"] = dict(zip(("gib", "measured"), run["memory"], strict=True))
            results.setdefault("vlrl", summary)
            title = "vlrl"
            if kernel:
                results.setdefault("kernels", {})[kernel] = summary
                title += f", experts kernel {kernel}"
            print_report(title, summary, run["memory"], args.steps - 1)
            save_json(args, results)  # now too: these numbers stay when a later run fails
        if "kernels" in results:
            print_kernels(results["kernels"])
        if args.trl and floor is not None:
            trl_run = run_trl(args, model, data, tmp / "trl", device)
            results["trl"] = summarise(trl_run["history"], trl_run["wall"], results["shape"], floor)
            results["trl"]["peak_memory"] = dict(zip(("gib", "measured"), trl_run["memory"], strict=True))
            print_report("TRL GRPOTrainer", results["trl"], trl_run["memory"], args.steps - 1)
            save_json(args, results)
    return results


def save_json(args, results: dict) -> None:
    """With --json: the results so far and the arguments, to that file."""
    if args.json:
        arguments = vars(args) | {"json": str(args.json)}
        plain = {k: asdict(results[k]) for k in ("shape", "counts") if k in results}
        args.json.write_text(json.dumps(results | plain | {"args": arguments}, indent=1))


if __name__ == "__main__":
    main()
