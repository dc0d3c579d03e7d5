"""Reduce a per-token loss [B, T] to a scalar: `AGGREGATIONS[mode](loss, mask, norm_length, denominator)`.

Kept apart from the per-token losses as in verl's `agg_loss(loss_mat, mask, mode)`. Each mode is
sum(numerator) / denominator, where the denominator counts *units*: valid tokens for
`token_mean`, sequences with at least one valid token for the `seq_*` modes.

Gradient accumulation: with a batch split into micro-batches, averaging micro-batch means is not
the full-batch mean (micro-batches hold different token counts). The trainer therefore computes
the denominator once on the full batch and passes it to every micro-batch:

    denom = aggregation_denominator(full_mask, mode)       # before splitting
    for mb in micro_batches:
        loss_mat, metrics = policy_loss(...)                # [b, t]
        aggregate(loss_mat, mb.mask, mode, norm_length, denominator=denom).backward()
    optimizer.step()

The micro-batch losses then sum exactly to the full-batch loss, and so do their gradients
(tests/algos/test_aggregation.py). Under data parallelism whose all-reduce *averages* gradients
over W ranks, pass denom = (sum of the ranks' denominators) / W.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vlrl.algos.registry import get

Denominator = Tensor | float | None  # None: this batch's own unit count


def _tokens_per_seq(loss: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Masked token sums [B] of the loss and the number of valid tokens per sequence [B].

    torch.where, not loss * mask, so an inf/NaN at a padded position cannot leak in as 0 * inf.
    """
    valid = mask.bool()
    return torch.where(valid, loss, torch.zeros_like(loss)).sum(-1), valid.to(loss.dtype).sum(-1)


def num_tokens(mask: Tensor) -> Tensor:
    """Units of `token_mean`: number of valid tokens."""
    return mask.bool().sum()


def num_sequences(mask: Tensor) -> Tensor:
    """Units of the `seq_*` modes: sequences with at least one valid token (empty rows don't count)."""
    return mask.bool().any(-1).sum()


def token_mean(
    loss: Tensor, mask: Tensor, norm_length: int | None = None, denominator: Denominator = None
) -> Tensor:
    """Sum over all valid tokens / number of valid tokens (DAPO, arXiv 2503.14476, sec. 3.3).

    Every token weighs the same, so long responses are not down-weighted. [B, T] -> [].
    """
    total = _tokens_per_seq(loss, mask)[0].sum()
    return total / (num_tokens(mask).clamp(min=1) if denominator is None else denominator)


def seq_mean_token_mean(
    loss: Tensor, mask: Tensor, norm_length: int | None = None, denominator: Denominator = None
) -> Tensor:
    """Mean over each sequence's tokens, then mean over sequences (original GRPO, arXiv 2402.03300).

    The 1/|o_i| factor is the length bias Dr. GRPO removes; GSPO's gradient is defined with it.
    [B, T] -> [].
    """
    sums, counts = _tokens_per_seq(loss, mask)
    total = (sums / counts.clamp(min=1)).sum()
    return total / (num_sequences(mask).clamp(min=1) if denominator is None else denominator)


def seq_mean_token_sum_norm(
    loss: Tensor, mask: Tensor, norm_length: int | None = None, denominator: Denominator = None
) -> Tensor:
    """Per-sequence token sum / constant norm_length, then mean over sequences (Dr. GRPO, arXiv 2503.20783).

    norm_length (required) is a constant such as the maximum response length, the same for every
    sequence and micro-batch, so there is no length bias. [B, T] -> [].
    """
    if norm_length is None or norm_length <= 0:
        raise ValueError(f"seq_mean_token_sum_norm needs a positive norm_length, got {norm_length}")
    total = _tokens_per_seq(loss, mask)[0].sum() / norm_length
    return total / (num_sequences(mask).clamp(min=1) if denominator is None else denominator)


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm,
}

# Which units each mode divides by; a test checks it covers exactly AGGREGATIONS.
_UNITS: dict[str, Callable[[Tensor], Tensor]] = {
    "token_mean": num_tokens,
    "seq_mean_token_mean": num_sequences,
    "seq_mean_token_sum_norm": num_sequences,
}


def aggregation_denominator(mask: Tensor, mode: str) -> Tensor:
    """The full-batch denominator of `mode` over `mask` [B, T] (at least 1), for micro-batching."""
    return get(_UNITS, mode, "aggregation")(mask).clamp(min=1)


def aggregate(
    loss: Tensor,
    mask: Tensor,
    mode: str,
    norm_length: int | None = None,
    denominator: Denominator = None,
) -> Tensor:
    """Reduce loss [B, T] with `mode`; `denominator` overrides the batch's own unit count."""
    return get(AGGREGATIONS, mode, "aggregation")(loss, mask, norm_length, denominator)
