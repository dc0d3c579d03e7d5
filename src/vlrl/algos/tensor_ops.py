"""Small tensor helpers used by the algorithm tables: masked statistics and logits -> log-probs.

Masks are `bool` or 0/1 tensors broadcastable to the values; masked-out positions may hold any
value, inf and NaN included (they are selected away with torch.where, never multiplied by 0).
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over positions where `mask` is set (over `dim`, or over everything)."""
    kept = torch.where(mask.bool(), x, torch.zeros_like(x))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over valid positions; 0 (not NaN) where there is none."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """(x - mean) / (std + eps) over all valid positions (unbiased std); masked positions -> 0.

    Used for token-level whitening as in REINFORCE++ (arXiv 2501.03262). Fewer than two valid
    positions -> zeros (the std is undefined).
    """
    n = mask.to(x.dtype).sum()
    if n < 2:
        return torch.zeros_like(x)
    mean = masked_mean(x, mask)
    var = masked_sum((x - mean) ** 2, mask) / (n - 1)
    return torch.where(mask.bool(), (x - mean) / (var.sqrt() + eps), torch.zeros_like(x))


def entropy_from_logits(logits: Tensor, chunk_size: int = 1024) -> Tensor:
    """Entropy of softmax(logits) per position: [B, T, V] -> [B, T], float32 or wider.

    H = logsumexp(z) - sum_v softmax(z)_v z_v, computed `chunk_size` rows at a time so that a
    float32 copy of the full [B*T, V] logits never exists at once. (Under autograd each chunk
    keeps its softmax for backward; call under `torch.no_grad()` when it is only a metric.)
    """
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    # split, not slicing: the backward of each slice would fill a zero gradient of the full size.
    for chunk in flat.split(chunk_size):
        z = chunk.float()
        out.append(torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1))
    ent = torch.cat(out) if out else flat.new_zeros(0, dtype=torch.float32)
    return ent.view(logits.shape[:-1])


def logprobs_from_logits(logits: Tensor, ids: Tensor, chunk_size: int = 1024) -> Tensor:
    """log softmax(logits)[ids]: logits [B, T, V], ids [B, T] (valid vocabulary indices) -> [B, T].

    Computed as z[id] - logsumexp(z) per chunk of rows, in float32 (logsumexp in bf16 loses too
    much precision), so neither a full log-softmax nor a full float32 copy is materialised.
    Shift logits/ids for next-token prediction and divide by the sampling temperature before.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    flat_ids = ids.reshape(-1, 1)
    out = []
    for chunk, chunk_ids in zip(flat.split(chunk_size), flat_ids.split(chunk_size), strict=True):
        z = chunk.float()
        out.append(z.gather(-1, chunk_ids).squeeze(-1) - torch.logsumexp(z, -1))
    logp = torch.cat(out) if out else flat.new_zeros(0, dtype=torch.float32)
    return logp.view(ids.shape)
