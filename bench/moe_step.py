"""Benchmark: the GRPO step of a tiny MoE VLM with transformers' grouped_mm and eager expert kernels,
and against a dense model of the same active size, in one run.

Three sides, all vlrl's GRPOTrainer on the same data, rewards, seeds and settings:
- `moe grouped_mm` and `moe eager`: the factory's tiny `qwen3_vl_moe` (every layer routes each
  token to top_k of its experts) loaded with `model.experts_implementation` grouped_mm (one grouped
  matmul over all experts) and eager (a Python loop over the experts that received tokens);
- `dense`: its dense twin, a Qwen3-VL built here from the MoE's own config with each layer's
  experts replaced by one MLP of intermediate size top_k * moe_intermediate_size (what a token
  passes through in the MoE; same hidden size, layers, attention, vision tower, tokenizer and
  processor), so the same active parameters per token, minus the routers.

The task is like the RL tests' has-"e" task, with a graded reward so that advantages are not zero
in any group of a random tiny policy (the number of distinct characters of the answer, over 8), on
the synthetic counting data: P prompts x G samples of at most `--max-new-tokens` tokens per step,
KL to the reference model with `--kl-beta` (> 0 by default: the reference's forward runs the
experts too, and the KL term makes the losses after the first step non-zero, where the on-policy
policy-gradient loss is zero in value). Each run trains `--steps` steps; the first is a warm-up and is not counted. Runs are
interleaved (grouped_mm, eager, dense, grouped_mm, ...) `--runs` times, so that load from other
processes hits all sides alike.

Printed per side: the median (and min-max) over the counted steps of all runs of the step's wall
time (`timing_s/step`: rollout, scoring, reference and update) and of its update phase
(`timing_s/update`: the forward and backward passes, where the kernel matters most), then the
ratios grouped_mm / eager and MoE (grouped_mm) / dense, and the per-step losses of both kernels,
which must agree (same seeds, the same arithmetic up to float rounding): the run stops with an
error if they do not. The last line is the result as JSON. CPU times on a shared machine are only
comparable within one run: compare ratios, not seconds.

    python bench/moe_step.py                                   # micro size, 3 runs
    python bench/moe_step.py --threads 1 --runs 5              # on a shared machine (see below)
    python bench/moe_step.py --size tiny --prompts 8 --group 8 --max-new-tokens 16 --runs 5

On a CPU shared with other jobs, two torch threads per process wait on each other: steps of the
micro models took 3-30 s with torch's default of 2 threads and 0.3-0.8 s with `--threads 1`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig, Qwen3VLConfig

from vlrl.config import TrainConfig, load_config
from vlrl.models.loading import load_processor
from vlrl.models.tiny.factory import FAMILIES, SIZES, build_tiny_model
from vlrl.synth import generate_dataset

MOE_FAMILY = "qwen3_vl_moe"
# Text-config fields of Qwen3-VL-MoE that its dense twin (Qwen3VLConfig) has no use for.
MOE_FIELDS = (
    "num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
    "mlp_only_layers", "norm_topk_prob", "router_aux_loss_coef", "output_router_logits",
)  # fmt: skip
SIDES = {"moe grouped_mm": "grouped_mm", "moe eager": "eager", "dense": None}  # side -> experts kernel
METRICS = {"s/step": "timing_s/step", "update s": "timing_s/update"}
REWARD_FILE = """
def distinct(completions, **fields):
    return [len(set(c)) / 8 for c in completions]
"""
# Per-step losses of the two kernels: float rounding differs (one grouped matmul against a loop
# of per-expert matmuls), nothing else may.
LOSS_RTOL, LOSS_ATOL = 1e-4, 1e-6


# ---- models ------------------------------------------------------------------------------------
def dense_twin(moe: Path, out: Path, seed: int = 0) -> Path:
    """Save beside `moe` its dense twin: the same config with each layer's experts replaced by one
    MLP of top_k experts' width, random weights, and the MoE's tokenizer, processor and
    generation settings."""
    config = AutoConfig.from_pretrained(moe)
    text = {k: v for k, v in config.text_config.to_dict().items() if k not in (*MOE_FIELDS, "model_type")}
    text["intermediate_size"] = (
        config.text_config.num_experts_per_tok * config.text_config.moe_intermediate_size
    )
    vision = {k: v for k, v in config.vision_config.to_dict().items() if k != "model_type"}
    ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    dense = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=config.tie_word_embeddings,
        **{k: getattr(config, k) for k in ids},
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(dense)
    model.generation_config = GenerationConfig.from_pretrained(moe)
    model.save_pretrained(out)
    load_processor(moe).save_pretrained(out)
    return out


def check_same_active_size(moe: Path, dense: Path) -> None:
    """Fail unless `dense` is `moe` with each MoE layer replaced by one MLP of top_k experts' width."""
    m, d = (AutoConfig.from_pretrained(p) for p in (moe, dense))
    mt, dt = m.text_config, d.text_config
    shared = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")
    wrong = {k: (getattr(mt, k), getattr(dt, k)) for k in shared if getattr(mt, k) != getattr(dt, k)}
    active = mt.num_experts_per_tok * mt.moe_intermediate_size
    if dt.intermediate_size != active:
        wrong["intermediate_size"] = (
            f"{mt.num_experts_per_tok} x {mt.moe_intermediate_size}",
            dt.intermediate_size,
        )
    if getattr(mt, "decoder_sparse_step", 1) != 1 or getattr(mt, "mlp_only_layers", []):
        wrong["sparse layers"] = ("not every layer", "every layer")
    vision = [c.vision_config.to_dict() | {"model_type": None} for c in (m, d)]  # the class names differ
    if vision[0] != vision[1]:
        wrong["vision_config"] = ("differs", "")
    if wrong:
        raise SystemExit(f"moe_step: the dense twin does not match {MOE_FAMILY}: (moe, dense) {wrong}")


def parameter_counts(path: Path) -> dict[str, int]:
    """Total parameters, and those one token uses (routed experts counted at top_k / experts),
    from the checkpoint's config on the meta device."""
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    text = config.text_config
    # transformers 5.x fuses each layer's routed experts into 3-D parameters [experts, ..., ...].
    routed = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.endswith((".experts.gate_up_proj", ".experts.down_proj"))
    )
    unused = routed * (1 - text.num_experts_per_tok / text.num_experts) if routed else 0
    return {"total": total, "active": round(total - unused)}


def build_models(root: Path, size: str) -> dict[str, Path]:
    """{"moe": the factory's tiny MoE, "dense": its dense twin}."""
    if MOE_FAMILY not in FAMILIES:
        raise SystemExit(f"moe_step: the tiny-model factory has no {MOE_FAMILY} family")
    moe = build_tiny_model(MOE_FAMILY, root / MOE_FAMILY, size=size)
    dense = dense_twin(moe, root / "dense_twin")
    check_same_active_size(moe, dense)
    return {"moe": moe, "dense": dense}


# ---- runs --------------------------------------------------------------------------------------
def train_config(args, model: Path, kernel: str | None, data: Path, reward: Path, out: Path) -> TrainConfig:
    overrides = [
        f"model.path={model}",
        f"data.train={data}",
        "data.template=answer_only",
        "data.system_prompt=Answer.",
        f"rollout.group_size={args.group}",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "rollout.temperature=1.0",
        f"reward.functions=['{reward}:distinct']",
        f"algo.kl_beta={args.kl_beta}",
        f"train.steps={args.steps}",
        "train.lr=1e-3",
        "train.lr_schedule=constant",
        "train.seed=0",
        "train.device=cpu",
        "train.save_every=0",
        f"train.output_dir={out}",
        "logging.progress=false",
        "logging.jsonl=false",
        "logging.rollouts_every=0",
    ]
    if kernel:
        overrides.append(f"model.experts_implementation={kernel}")
    return load_config(None, overrides, schema=TrainConfig)


def run_side(config: TrainConfig) -> list[dict]:
    """One training run; the metrics of each step."""
    from vlrl.training.grpo import GRPOTrainer

    return GRPOTrainer(config).train()


def check_losses(losses: dict[str, list[float]]) -> None:
    """The two kernels' per-step losses agree, or the run stops saying which step differs."""
    a, b = losses["moe grouped_mm"], losses["moe eager"]
    bad = [
        i + 1
        for i, (x, y) in enumerate(zip(a, b, strict=True))
        if not math.isclose(x, y, rel_tol=LOSS_RTOL, abs_tol=LOSS_ATOL)
    ]
    if bad:
        raise SystemExit(f"moe_step: grouped_mm and eager losses differ at step(s) {bad}: {a} vs {b}")


# ---- report ------------------------------------------------------------------------------------
def medians(steps: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """{side: {metric: median}} over the counted steps of every run."""
    return {
        side: {m: statistics.median(h[key] for h in rows) for m, key in METRICS.items()}
        for side, rows in steps.items()
    }


def print_table(
    steps: dict[str, list[dict]], counts: dict[str, dict[str, int]]
) -> dict[str, dict[str, float]]:
    med = medians(steps)
    print(
        f"\n{'side':16}{'parameters (active)':>24}"
        + "".join(f"{m + ' median [min-max]':>28}" for m in METRICS)
    )
    for side, rows in steps.items():
        c = counts[side]
        cells = [f"{c['total'] / 1e6:.2f}M ({c['active'] / 1e6:.2f}M)"]
        for m, key in METRICS.items():
            values = [h[key] for h in rows]
            cells.append(f"{med[side][m]:.3f} [{min(values):.3f}-{max(values):.3f}]")
        print(f"{side:16}{cells[0]:>24}" + "".join(f"{c:>28}" for c in cells[1:]))
    return med


def ratios(med: dict[str, dict[str, float]]) -> dict[str, float]:
    """Time ratios: grouped_mm over eager, and the MoE (grouped_mm) over the dense twin."""
    pairs = {"grouped_mm/eager": ("moe grouped_mm", "moe eager"), "moe/dense": ("moe grouped_mm", "dense")}
    return {f"{name} {m}": med[a][m] / med[b][m] for name, (a, b) in pairs.items() for m in METRICS}


# ---- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="micro", help="tiny-model size of both models")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--kl-beta", type=float, default=0.04, help="KL weight (> 0: the reference model runs)")
    p.add_argument("--steps", type=int, default=4, help="steps per run; the first is a warm-up (at least 2)")
    p.add_argument("--runs", type=int, default=3, help="interleaved runs per side")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, help="keep the models and runs here instead of a temporary folder")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be at least 2: the first step is a warm-up and is not counted")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns {"ratios", "medians", "losses", "parameters"}."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {MOE_FAMILY} and its dense twin, "
          f"size {args.size}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_name:
        root = args.out or Path(tmp_name)
        paths = build_models(root / "models", args.size)
        model = {side: paths["moe" if kernel else "dense"] for side, kernel in SIDES.items()}
        counts = {side: parameter_counts(model[side]) for side in SIDES}
        data = generate_dataset("counting", 4 * args.prompts * args.steps, root / "data", seed=0)["train"]
        reward = root / "rewards.py"
        reward.write_text(REWARD_FILE)
        steps: dict[str, list[dict]] = {side: [] for side in SIDES}
        losses: dict[str, list[float]] = {}
        for r in range(args.runs):
            for side, kernel in SIDES.items():
                out = root / "runs" / f"{side.replace(' ', '_')}_{r}"
                history = run_side(train_config(args, model[side], kernel, data, reward, out))
                steps[side] += history[1:]
                losses.setdefault(side, [h["loss"] for h in history])
                print(f"run {r + 1}/{args.runs} {side}: " + ", ".join(f"{h['timing_s/step']:.3f}" for h in history)
                      + " s/step", flush=True)  # fmt: skip
        med = print_table(steps, counts)
        result = {"ratios": ratios(med), "medians": med, "losses": losses, "parameters": counts}
    print("\nratios (time, lower is faster for the first):")
    for name, value in result["ratios"].items():
        print(f"  {name:28}x{value:.2f}")
    print("losses per step:")
    for side in ("moe grouped_mm", "moe eager"):
        print(f"  {side:16}" + "  ".join(f"{x:.6f}" for x in losses[side]))
    check_losses(losses)
    print(f"  grouped_mm and eager agree (rtol {LOSS_RTOL:g}, atol {LOSS_ATOL:g})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
