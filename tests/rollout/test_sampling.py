"""Sampling maths on hand-made logits: filters, greedy, banned tokens, behaviour log-probs."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from vlrl.rollout import SamplingParams, sampling
from vlrl.rollout.sampling import group_seed, row_uniforms, sample_next, top_k_filter, top_p_filter

INF = float("-inf")


def test_doctests():
    assert doctest.testmod(sampling).failed == 0


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert top_k_filter(logits, 2).tolist() == [[INF, 3.0, 2.0, INF]]
    assert torch.equal(top_k_filter(logits, 0), logits)  # 0 = off


def test_top_p_keeps_the_smallest_set_reaching_p():
    # probs 0.5, 0.3, 0.2: p = 0.7 needs the first two (0.5 < 0.7 <= 0.8); p = 0.5 only the first.
    logits = torch.tensor([[0.5, 0.2, 0.3]]).log()
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [[True, False, True]]
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False]]
    # The most likely token survives any p.
    assert torch.isfinite(top_p_filter(logits, 1e-6)).tolist() == [[True, False, False]]


def test_greedy_skips_banned_tokens():
    logits = torch.tensor([[5.0, 1.0, 2.0]])
    banned = torch.tensor([True, False, False])
    tokens, logp = sample_next(logits, banned, SamplingParams(1, 1, temperature=0))
    assert tokens.tolist() == [2]
    # log softmax over the unbanned [1, 2]: 2 - log(e^1 + e^2)
    assert logp.item() == pytest.approx(2 - math.log(math.e + math.e**2))


def test_logprob_is_tempered_and_taken_before_truncation():
    # top_k = 1 always picks token 0; its reported log-prob is that of softmax([2, 0, 0] / 2)
    # = e^2 / (e^2 + 2), not 0 (the truncated distribution's).
    logits = torch.tensor([[4.0, 0.0, 0.0]]).repeat(5, 1)
    banned = torch.zeros(3, dtype=torch.bool)
    tokens, logp = sample_next(logits, banned, SamplingParams(1, 1, temperature=2.0, top_k=1))
    assert tokens.tolist() == [0] * 5
    torch.testing.assert_close(logp, torch.full((5,), math.log(math.e**2 / (math.e**2 + 2))))


def test_banned_tokens_are_never_sampled_even_when_likely():
    logits = torch.tensor([[10.0, 0.0, 0.0]]).repeat(1000, 1)
    banned = torch.tensor([True, False, False])
    uniforms = row_uniforms(0, torch.arange(1000), 0)
    tokens, _ = sample_next(logits, banned, SamplingParams(1, 1, temperature=5.0), uniforms)
    assert 0 not in tokens.tolist()
    assert set(tokens.tolist()) == {1, 2}


def test_inverse_cdf_draws_follow_the_distribution():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    logits = probs.log()[None].repeat(20000, 1)
    uniforms = row_uniforms(7, torch.arange(20000), 3)
    tokens, _ = sample_next(logits, torch.zeros(4, dtype=torch.bool), SamplingParams(1, 1), uniforms)
    freq = torch.bincount(tokens, minlength=4).double() / 20000
    # 4 standard errors of a frequency near 0.5 with n = 20000 is about 0.014.
    torch.testing.assert_close(freq, probs.double(), atol=0.015, rtol=0)
    assert freq[1] == 0  # a zero-probability token is never drawn


def test_row_uniforms_depend_only_on_seed_row_and_step():
    rows = torch.arange(64)
    u = row_uniforms(5, rows, 2)
    assert u.dtype == torch.float64 and bool(((u >= 0) & (u < 1)).all())
    # The same row gives the same draw in any batch, at any position in it.
    torch.testing.assert_close(row_uniforms(5, rows[40:48].flip(0), 2), u[40:48].flip(0))
    assert not torch.equal(row_uniforms(5, rows, 3), u)
    assert not torch.equal(row_uniforms(6, rows, 2), u)
    assert len(set(u.tolist())) == 64
    # Roughly uniform: mean 0.5 within 4 standard errors (sqrt(1/12 / 4096) ~ 0.0045).
    assert abs(row_uniforms(1, torch.arange(4096), 0).mean().item() - 0.5) < 0.018


def test_group_seeds_leave_room_for_every_completion_of_every_prompt_and_step():
    # Engines seed completion g of a group with base + g: no two (step, prompt, g) may share a seed.
    steps, prompts, G = 50, 64, 16
    seeds = [group_seed(step * 16, p) + g for step in range(steps) for p in range(prompts) for g in range(G)]
    assert len(set(seeds)) == steps * prompts * G
    assert group_seed(3, 7) == group_seed(3, 7) and 0 <= group_seed(3, 7) < 2**62


@pytest.mark.parametrize(
    ("field", "kw"),
    [("group_size", {"group_size": 0}), ("top_p", {"top_p": 0.0}), ("temperature", {"temperature": -1.0})],
)
def test_sampling_params_name_the_bad_field(field, kw):
    args = {"group_size": 2, "max_new_tokens": 4, **kw}
    with pytest.raises(ValueError, match=field):
        SamplingParams(**args)
