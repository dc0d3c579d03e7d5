"""Next-token sampling from logits: temperature, top-k, top-p, and the behaviour log-prob.

Pure tensor functions, shared by every backend that samples itself (the transformers one).

The behaviour log-prob reported for a sampled token is log_softmax(logits / temperature) at that
token, with banned tokens (vision placeholders, spare embedding rows) at -inf, taken BEFORE
top-k / top-p truncation. That is the quantity the trainer recomputes from its own forward pass
(log_softmax(logits / temperature)), so on-policy ratios start at exactly 1; the truncated
distribution the token was really drawn from differs only by the renormalisation over the kept
tokens, which the usual GRPO implementations (TRL, verl) ignore in the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlrl.rollout.base import SamplingParams


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the `k` largest logits per row ([R, V] -> [R, V], the rest -inf); k = 0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]  # [R, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose mass reaches `p`.

    [R, V] -> [R, V]. A token is dropped when the mass of the tokens ranked above it already
    reaches `p`, so the most likely token is always kept.

    >>> top_p_filter(torch.tensor([[2.0, 1.0, 0.0]]).log(), 0.5).exp()  # probs 2/3, 1/3, 0
    tensor([[2., 0., 0.]])
    """
    if p >= 1.0:
        return logits
    ranked, order = logits.sort(dim=-1, descending=True)  # [R, V]
    probs = ranked.softmax(-1)
    mass_above = probs.cumsum(-1) - probs
    drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, mass_above >= p)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: Tensor, banned: Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw one token per row: logits [R, V], banned [V] bool -> (tokens [R] long, logprobs [R] float32).

    Temperature 0 is greedy decoding; its log-prob is then that of the untempered distribution
    (a greedy run is for evaluation; its "policy" would put probability 1 on the token).
    """
    logits = logits.float().masked_fill(banned, float("-inf"))
    if params.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, _picked_logprobs(logits, tokens)
    scaled = logits / params.temperature
    truncated = top_p_filter(top_k_filter(scaled, params.top_k), params.top_p)
    tokens = torch.multinomial(truncated.softmax(-1), 1, generator=generator).squeeze(-1)
    return tokens, _picked_logprobs(scaled, tokens)


def _picked_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log_softmax(logits)[r, tokens[r]]: [R, V], [R] -> [R]."""
    return logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
