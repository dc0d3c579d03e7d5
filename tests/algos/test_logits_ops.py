"""masked_mean and the logits helpers against direct PyTorch formulas."""

import math

import torch
from torch.testing import assert_close

from vlrl.algos import entropy_from_logits, logprobs_from_logits, masked_mean


def test_masked_mean():
    x = torch.tensor([[1.0, 3.0, 99.0], [5.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # valid [1, 3, 5]: mean 3; per row [2, 5]
    assert_close(masked_mean(x, mask), torch.tensor(3.0))
    assert_close(masked_mean(x, mask, dim=-1), torch.tensor([2.0, 5.0]))
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0  # nothing valid -> 0, not NaN


def test_entropy_uniform_and_reference():
    # uniform over V=4 -> ln 4 = 1.386294
    assert_close(entropy_from_logits(torch.zeros(2, 3, 4)), torch.full((2, 3), math.log(4)))
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0)) * 3
    ref = torch.distributions.Categorical(logits=logits).entropy()
    out = entropy_from_logits(logits, chunk_size=4)  # 15 rows in chunks of 4
    assert out.shape == (3, 5)
    assert_close(out, ref)


def test_logprobs_match_log_softmax_gather_and_bf16():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 13, generator=g) * 4
    ids = torch.randint(0, 13, (2, 7), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    out = logprobs_from_logits(logits, ids, chunk_size=3)
    assert out.shape == (2, 7)
    assert_close(out, ref)
    # bf16 logits: computed in float32 -> same as float32 maths on the rounded logits
    lb = logits.bfloat16()
    out_b = logprobs_from_logits(lb, ids)
    assert out_b.dtype == torch.float32
    assert_close(out_b, torch.log_softmax(lb.float(), -1).gather(-1, ids[..., None]).squeeze(-1))
    # gradient flows back to the logits: d logp / d z = onehot - softmax, which sums to 0 per row
    z = logits.clone().requires_grad_(True)
    logprobs_from_logits(z, ids).sum().backward()
    assert_close(z.grad.sum(-1), torch.zeros(2, 7), atol=1e-6, rtol=0)


def test_temperature_and_blocked_ids_applied_per_chunk_in_float32():
    """bf16 logits [2, 6, 10] at temperature 0.5 with ids 1 and 2 blocked, in chunks of 4 rows:
    the float32 maths of log_softmax(z / 0.5) with z[1] = z[2] = -1e9, in value and gradient, while
    nothing saved for backward is a float32 row of the vocabulary (each chunk is recomputed)."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 6, 10, generator=g) * 3).bfloat16()
    ids = torch.randint(3, 10, (2, 6), generator=g)
    blocked = torch.tensor([1, 2])
    weights = torch.randn(2, 6, generator=g)

    def reference(x):
        z = x.float() / 0.5
        z[..., blocked] = -1e9
        logp = torch.log_softmax(z, -1)
        return logp.gather(-1, ids[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)

    x_ref = logits.clone().requires_grad_(True)
    ref_logp, ref_ent = reference(x_ref)
    ((ref_logp + ref_ent) * weights).sum().backward()

    saved_float32_rows = []

    def pack(t):
        if t.dtype == torch.float32 and t.dim() and t.shape[-1] == 10:
            saved_float32_rows.append(t.numel() // 10)
        return t

    x = logits.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp = logprobs_from_logits(x, ids, chunk_size=4, temperature=0.5, blocked=blocked)
        ent = entropy_from_logits(x, chunk_size=4, temperature=0.5, blocked=blocked)
    ((logp + ent) * weights).sum().backward()
    assert saved_float32_rows == []
    assert_close(logp, ref_logp)
    assert_close(ent, ref_ent)
    assert x.grad.dtype == torch.bfloat16
    assert_close(x.grad, x_ref.grad)
    assert (x.grad[..., blocked] == 0).all()  # a blocked logit cannot move its probability off 0
