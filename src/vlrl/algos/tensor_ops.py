"""Small tensor helpers used by the algorithm tables: masked statistics and logits -> log-probs.

Masks are `bool` or 0/1 tensors broadcastable to the values; masked-out positions may hold any
value, inf and NaN included (they are selected away with torch.where, never multiplied by 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over positions where `mask` is set (over `dim`, or over everything)."""
    kept = torch.where(mask.bool(), x, torch.zeros_like(x))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over valid positions; 0 (not NaN) where there is none."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def entropy_from_logits(
    logits: Tensor, chunk_size: int = 1024, temperature: float = 1.0, blocked: Tensor | None = None
) -> Tensor:
    """Entropy of softmax(logits / temperature) per position: [B, T, V] -> [B, T], float32.

    H = logsumexp(z) - sum_v softmax(z)_v z_v, computed `chunk_size` rows at a time (see
    `_per_chunk`: a float32 copy of the full [B*T, V] logits never exists, not even for backward).
    `blocked` ([K] vocabulary ids) get logit -1e9: probability 0, as the sampler gives them.
    """

    def entropy(z: Tensor) -> Tensor:
        return torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)

    flat = logits.reshape(-1, logits.shape[-1])
    return _per_chunk(entropy, flat, [], chunk_size, temperature, blocked).view(logits.shape[:-1])


def logprobs_from_logits(
    logits: Tensor,
    ids: Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    blocked: Tensor | None = None,
) -> Tensor:
    """log softmax(logits / temperature)[ids]: logits [B, T, V], ids [B, T] (valid vocabulary
    indices) -> [B, T] float32.

    Computed as z[id] - logsumexp(z) per chunk of rows in float32 (logsumexp in bf16 loses too
    much precision; so would dividing bf16 logits by the temperature), so neither a full
    log-softmax nor a full float32 copy is materialised. `blocked` as in `entropy_from_logits`.
    Shift logits/ids for next-token prediction before.
    """

    def logprob(z: Tensor, chunk_ids: Tensor) -> Tensor:
        return z.gather(-1, chunk_ids).squeeze(-1) - torch.logsumexp(z, -1)

    flat = logits.reshape(-1, logits.shape[-1])
    logp = _per_chunk(logprob, flat, [ids.reshape(-1, 1)], chunk_size, temperature, blocked)
    return logp.view(ids.shape)


def _per_chunk(
    fn: Callable[..., Tensor],
    flat: Tensor,
    row_args: list[Tensor],
    chunk_size: int,
    temperature: float,
    blocked: Tensor | None,
) -> Tensor:
    """cat over chunks of `chunk_size` rows of fn(z, *row_args chunks) -> [rows], where z is the
    chunk in float32, divided by `temperature` and with the `blocked` columns at -1e9.

    Under autograd each chunk is checkpointed: its float32 copy is rebuilt from the (bf16)
    chunk in backward instead of being saved, so saved tensors total one copy of `flat` in its own
    dtype rather than all chunks in float32 (2.5 GB at 8 x 512 rows of a 152k vocabulary).
    """
    if blocked is not None:
        blocked = blocked.to(flat.device)

    def scored(chunk: Tensor, *args: Tensor) -> Tensor:
        z = chunk.float() / temperature  # always a new tensor, so the fill below is never in the input
        if blocked is not None:
            # A large finite value rather than -inf: the entropy's p * log p must be 0, not 0 * inf = nan.
            z.index_fill_(-1, blocked, -1e9)
        return fn(z, *args)

    checkpointed = torch.is_grad_enabled() and flat.requires_grad
    out = []
    # split, not slicing: the backward of each slice would fill a zero gradient of the full size.
    for chunk, *args in zip(flat.split(chunk_size), *(a.split(chunk_size) for a in row_args), strict=True):
        if checkpointed:
            out.append(checkpoint(scored, chunk, *args, use_reentrant=False, preserve_rng_state=False))
        else:
            out.append(scored(chunk, *args))
    return torch.cat(out) if out else flat.new_zeros(0, dtype=torch.float32)
