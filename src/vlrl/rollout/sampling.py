"""Next-token sampling from logits: temperature, top-k, top-p, and the behaviour log-prob.

Pure tensor functions, shared by every backend that samples itself (the transformers one).

The behaviour log-prob reported for a sampled token is log_softmax(logits / temperature) at that
token, with banned tokens (vision placeholders, spare embedding rows) at -inf, taken BEFORE
top-k / top-p truncation. That is the quantity the trainer recomputes from its own forward pass
(log_softmax(logits / temperature)), so on-policy ratios start at exactly 1; the truncated
distribution the token was really drawn from differs only by the renormalisation over the kept
tokens, which the usual GRPO implementations (TRL, verl) ignore in the same way.

Draws are by inverse CDF from `row_uniforms`, a counter-based generator: the uniform of row r at
decode step t depends only on (seed, r, t), not on which other rows share the batch. A prompt's
group is therefore sampled the same whether its rank decodes 32 prompts or 16 (data parallelism),
or in another chunk, up to float rounding of the logits themselves.
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


_U64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 value torch stores."""
    x &= _U64
    return x - (1 << 64) if x >> 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shr(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(x: Tensor) -> Tensor:
    """SplitMix64's finaliser (Steele et al., 2014) on int64 tensors; products wrap mod 2^64."""
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def row_uniforms(seed: int, rows: Tensor, step: int) -> Tensor:
    """Uniforms in [0, 1), float64 [R], one per row id in `rows` ([R] int64) at decode `step`.

    A pure function of (seed, row id, step): the counter-based draw that makes sampling
    independent of batch composition.
    """
    base = _splitmix64(torch.tensor([_signed(seed * 0x100000001B3 + step)], dtype=torch.int64))
    bits = _splitmix64(_splitmix64(base.to(rows.device) + rows * _GOLDEN))
    return _shr(bits, 11).double() * 2.0**-53


def sample_next(
    logits: Tensor, banned: Tensor, params: SamplingParams, uniforms: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Draw one token per row: logits [R, V], banned [V] bool -> (tokens [R] long, logprobs [R] float32).

    `uniforms` [R] in [0, 1) pick each row's token by inverse CDF (see `row_uniforms`); None
    draws them from torch's global generator. Temperature 0 is greedy decoding; its log-prob is
    then that of the untempered distribution (a greedy run is for evaluation; its "policy" would
    put probability 1 on the token).
    """
    logits = logits.float().masked_fill(banned, float("-inf"))
    if params.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, _picked_logprobs(logits, tokens)
    scaled = logits / params.temperature
    truncated = top_p_filter(top_k_filter(scaled, params.top_k), params.top_p)
    if uniforms is None:
        uniforms = torch.rand(logits.shape[0], dtype=torch.float64, device=logits.device)
    cdf = truncated.double().softmax(-1).cumsum(-1)  # [R, V]
    # The first token whose CDF exceeds u: a zero-probability token never is (its CDF equals its
    # predecessor's), and u * total guards against a total rounded below 1.
    target = (uniforms.to(cdf.device) * cdf[:, -1])[:, None]
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
    return tokens, _picked_logprobs(scaled, tokens)


def _picked_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log_softmax(logits)[r, tokens[r]]: [R, V], [R] -> [R]."""
    return logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)


def group_seed(seed: int, prompt: int) -> int:
    """The seed of global prompt `prompt`'s group for engines that seed completion g with `base + g`.

    vLLM gives the g-th of n children `seed + g`, and the SGLang client does the same per row, so
    consecutive integers as per-prompt seeds would make completion 1 of prompt p redraw completion 0
    of prompt p + 1 (and steps, whose seeds are close, would overlap as well). A hash of (seed,
    prompt) spreads the groups over 62 bits, where two ranges of G seeds practically never meet.
    """
    mixed = _splitmix64(torch.tensor([_signed(seed * 0x100000001B3 + prompt)], dtype=torch.int64))
    return int(_shr(mixed, 2).item())
