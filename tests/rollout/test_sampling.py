"""Sampling maths on hand-made logits: filters, greedy, banned tokens, behaviour log-probs."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from vlrl.rollout import SamplingParams, sampling
from vlrl.rollout.sampling import sample_next, top_k_filter, top_p_filter

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
    gen = torch.Generator().manual_seed(0)
    tokens, _ = sample_next(logits, banned, SamplingParams(1, 1, temperature=5.0), gen)
    assert 0 not in tokens.tolist()
    assert set(tokens.tolist()) == {1, 2}


@pytest.mark.parametrize(
    ("field", "kw"),
    [("group_size", {"group_size": 0}), ("top_p", {"top_p": 0.0}), ("temperature", {"temperature": -1.0})],
)
def test_sampling_params_name_the_bad_field(field, kw):
    args = {"group_size": 2, "max_new_tokens": 4, **kw}
    with pytest.raises(ValueError, match=field):
        SamplingParams(**args)
