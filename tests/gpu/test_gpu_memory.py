"""Memory at real sizes on CUDA: the log-prob pass at Qwen's 152k vocabulary, and a GRPO step at
the Qwen2.5-VL-3B shape within one 80 GB GPU."""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import needs_family

from vlrl.algos import entropy_from_logits, logprobs_from_logits
from vlrl.models import logprobs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (none is visible to torch)"
    ),
]
GiB = 2**30
VOCAB = 151936  # Qwen2-VL / Qwen2.5-VL-3B


def test_logprob_and_entropy_pass_stays_chunked_at_a_152k_vocabulary():
    """bf16 logits [8, 1024, 152k] (L = 2.49 GB; in float32 4.98 GB), the trainer's pass: log-probs
    with gradient, entropy as a metric, backward. Memory above the logits themselves, derived:
      backward: each chunk's bf16 gradient, all of them until split's backward concatenates
                them into the logits' gradient: 2 L
      float32 temporaries of one chunk of c = CHUNK_ROWS rows (C = c * V * 4 B = 0.62 GB): the
                upcast, the scaled copy and softmax/exp inside logsumexp, its gradient: 4 C
      + 256 MiB for the [rows]-sized results and the allocator's rounding.
    Bound 2 L + 4 C + 256 MiB = 7.7 GB. A full float32 copy and its temperature-scaled twin
    (the old path) alone take 9.96 GB in the forward pass."""
    c = logprobs.CHUNK_ROWS
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(8, 1024, VOCAB, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(
        True
    )
    ids = torch.randint(0, VOCAB, (8, 1024), device="cuda", generator=g)
    blocked = torch.arange(VOCAB - 64, VOCAB, device="cuda")
    size = logits.numel() * logits.element_size()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    logp = logprobs_from_logits(logits, ids, c, 0.7, blocked)
    with torch.no_grad():
        entropy = entropy_from_logits(logits, c, 0.7, blocked)
    logp.sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    bound = 2 * size + 4 * c * VOCAB * 4 + 256 * 2**20
    assert extra <= bound, f"peak {extra / GiB:.2f} GiB above the logits, bound {bound / GiB:.2f} GiB"
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(entropy).all()


def test_3b_shape_grpo_step_fits_one_80gb_gpu():
    """bench/gpu_step.py --shape 3b with its documented defaults (4 prompts x 8 samples, 600 image
    tokens, 256 response tokens, bf16 weights, no gradient checkpointing), two steps: the
    allocator's peak reservation stays under 76 GiB, the 80 GB H100's 79.1 GiB less room for the
    CUDA context and NCCL."""
    needs_family("qwen2_5_vl")
    from gpu_step import main

    torch.cuda.reset_peak_memory_stats()
    results = main(["--shape", "3b", "--steps", "2", "--device", "cuda"])
    reserved = torch.cuda.max_memory_reserved() / GiB
    assert reserved < 76, f"3B step reserved {reserved:.1f} GiB"
    assert results["vlrl"]["response_length"] == 256
