"""The physical floor of one GRPO step: the least time any implementation could take on a device.

Counts (weights, not activations, as in the usual 6N rule; Kaplan et al., arXiv 2001.08361):
  N_lm    language-model weights that multiply (decoder layers and lm_head; the input embedding is
          a lookup and is left out, except that a tied embedding is the lm_head and counts once)
  N_vis   vision-tower weights, applied to each of the Q patches of an image
  N_conn  patch-merger (connector) weights, applied to each of the I image tokens
A forward pass over one sequence of L tokens with one image costs

  F(L) = 2 * (N_lm * L + N_vis * Q + N_conn * I)   FLOPs,

a forward + backward pass 3 * F(L). The G rows of a group share their prompt exactly (a causal
model's prompt positions never see the response), so no implementation needs the prompt and its
image more than once per group, in training as in sampling (the gradient of the shared part is
the sum over its rows). The usual MFU accounting, 6 * N * all B * (L_p + R) tokens, counts each
prompt G times and is no floor. One pass over a step's batch of P prompts x G samples (B = P*G
rows, prompt L_p tokens, R response tokens per row) therefore costs

  S = P * F(L_p) + B * 2 * N_lm * R   FLOPs,

and the step, with `updates` passes over the batch and `extra_forwards` gradient-free ones (old
log-probs when updates > 1, reference log-probs when KL is on), does

  prefill  P * F(L_p)
  train    updates * 3 * S
  extra    extra_forwards * S

and samples R tokens per row. Decoding is bound by memory traffic: each of the R tokens (the first
one comes with the prefill) needs the language weights read once for the whole batch (W bytes)
and every row's KV cache of the L_p + t tokens before it (kv bytes per token, t = 0..R-1):

  decode bytes = R * W + B * kv * (R * L_p + R * (R - 1) / 2).

  floor = (prefill + train + extra) / peak FLOP/s + decode bytes / HBM bytes/s

Left out, so the floor stays a lower bound: attention-score FLOPs (about 4 * layers * context *
hidden per token, a few percent at these lengths), decode FLOPs (2 * N_lm * B per token: less
than the weight read while B < peak FLOP/s / HBM bytes/s, ~300 rows on an H100), the optimizer
step, rewards and host work.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """Peak dense bf16 matmul FLOP/s and HBM bytes/s from the vendor's data sheet."""

    name: str
    peak_flops: float
    hbm_bytes_per_s: float


# Matched as substrings of torch.cuda.get_device_name(); PCIe and 40 GB variants are slower than
# these SXM numbers: give theirs with --peak-tflops / --hbm-gbps.
DEVICES = (
    Device("H200", 989e12, 4.8e12),
    Device("H100", 989e12, 3.35e12),
    Device("A100", 312e12, 2.0e12),
)


def device_for(gpu_name: str) -> Device | None:
    """The table entry whose name occurs in `gpu_name` (e.g. 'NVIDIA H100 80GB HBM3'), or None."""
    return next((d for d in DEVICES if d.name in gpu_name), None)


@dataclass(frozen=True)
class ModelCounts:
    """What the floor needs of a model; see the module docstring for what each count covers."""

    language: int  # N_lm
    vision: int  # N_vis, per patch
    connector: int  # N_conn, per image token
    weight_bytes: int  # W: language weights read per decode step (N_lm * bytes per weight)
    kv_bytes_per_token: int  # 2 (K and V) * layers * KV heads * head dim * bytes per value


@dataclass(frozen=True)
class StepShape:
    """One step's workload: P prompts x G samples, each prompt L_p tokens with one image."""

    prompts: int  # P
    group: int  # G
    prompt_tokens: int  # L_p, image tokens included
    image_tokens: int  # I
    patches: int  # Q
    response_tokens: int  # R
    updates: int = 1  # passes over the batch (algo.ppo_epochs)
    extra_forwards: int = 0  # gradient-free passes over the batch


def forward_flops(m: ModelCounts, s: StepShape, tokens: int) -> float:
    """F(L): FLOPs of one forward pass over a sequence of `tokens` tokens with the step's image."""
    return 2.0 * (m.language * tokens + m.vision * s.patches + m.connector * s.image_tokens)


def step_flops(m: ModelCounts, s: StepShape) -> dict[str, float]:
    """{prefill, train, extra}: the step's compute-bound FLOPs by phase, from S (module docstring)."""
    prefill = s.prompts * forward_flops(m, s, s.prompt_tokens)
    batch_pass = prefill + s.prompts * s.group * 2.0 * m.language * s.response_tokens  # S
    return {"prefill": prefill, "train": s.updates * 3 * batch_pass, "extra": s.extra_forwards * batch_pass}


def decode_bytes(m: ModelCounts, s: StepShape) -> float:
    """R * W + B * kv * (R * L_p + R (R - 1) / 2): bytes read from HBM to sample R tokens per row."""
    R, rows = s.response_tokens, s.prompts * s.group
    return R * m.weight_bytes + rows * m.kv_bytes_per_token * (R * s.prompt_tokens + R * (R - 1) / 2)


def floor_seconds(m: ModelCounts, s: StepShape, device: Device) -> dict[str, float]:
    """Seconds per phase at the device's peaks ({prefill, train, extra, decode}) and their 'total'."""
    out = {k: v / device.peak_flops for k, v in step_flops(m, s).items()}
    out["decode"] = decode_bytes(m, s) / device.hbm_bytes_per_s
    out["total"] = sum(out.values())
    return out
