"""masked_mean / masked_whiten and the logits helpers against direct PyTorch formulas."""

import math

import torch
from torch.testing import assert_close

from vlrl.algos import entropy_from_logits, logprobs_from_logits, masked_mean, masked_whiten


def test_masked_mean_and_whiten():
    x = torch.tensor([[1.0, 3.0, 99.0], [5.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # valid [1, 3, 5]: mean 3; per row [2, 5]
    assert_close(masked_mean(x, mask), torch.tensor(3.0))
    assert_close(masked_mean(x, mask, dim=-1), torch.tensor([2.0, 5.0]))
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0  # nothing valid -> 0, not NaN
    # valid [1, 3, 5]: mean 3, var (unbiased) (4+0+4)/2 = 4, std 2 -> [-1, 0, 1]; masked -> 0
    assert_close(masked_whiten(x, mask), torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), atol=1e-5, rtol=0)


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
