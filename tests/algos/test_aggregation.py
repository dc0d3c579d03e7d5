"""Aggregation modes (hand-derived) and exact micro-batch equivalence via a shared denominator."""

import pytest
import torch
from torch.testing import assert_close

from vlrl.algos import AGGREGATIONS, aggregate, aggregation_denominator
from vlrl.algos.aggregation import _UNITS

# Two sequences of unequal length; padded positions hold 100 to catch any masking bug.
LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 100.0, 100.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def test_token_mean():
    # (1+2+3+4+5+6) / 6 tokens = 21/6 = 3.5
    assert_close(aggregate(LOSS, MASK, "token_mean"), torch.tensor(3.5))


def test_seq_mean_token_mean():
    # per sequence: 10/4 = 2.5 and 11/2 = 5.5 -> mean 4.0
    assert_close(aggregate(LOSS, MASK, "seq_mean_token_mean"), torch.tensor(4.0))


def test_seq_mean_token_sum_norm():
    # per sequence sum / norm_length 4: 10/4 = 2.5, 11/4 = 2.75 -> mean 2.625
    assert_close(aggregate(LOSS, MASK, "seq_mean_token_sum_norm", norm_length=4), torch.tensor(2.625))
    # a larger constant only rescales: norm_length 8 -> 1.3125
    assert_close(aggregate(LOSS, MASK, "seq_mean_token_sum_norm", norm_length=8), torch.tensor(1.3125))
    with pytest.raises(ValueError, match="norm_length"):
        aggregate(LOSS, MASK, "seq_mean_token_sum_norm")


def test_empty_rows_are_not_counted_and_never_nan():
    # add an all-padding row: token_mean still 21/6; seq means still over the 2 non-empty rows
    loss = torch.cat([LOSS, torch.full((1, 4), 100.0)])
    mask = torch.cat([MASK, torch.zeros(1, 4, dtype=MASK.dtype)])
    assert_close(aggregate(loss, mask, "token_mean"), torch.tensor(3.5))
    assert_close(aggregate(loss, mask, "seq_mean_token_mean"), torch.tensor(4.0))
    assert_close(aggregate(loss, mask, "seq_mean_token_sum_norm", norm_length=4), torch.tensor(2.625))
    loss[1, 3] = float("nan")  # padding may hold anything
    loss[2, 0] = float("inf")
    assert_close(aggregate(loss, mask, "token_mean"), torch.tensor(3.5))
    for mode in AGGREGATIONS:  # nothing valid at all -> 0, not NaN
        assert aggregate(loss[2:], mask[2:], mode, norm_length=4).item() == 0.0


def test_units_table_covers_every_mode():
    assert set(_UNITS) == set(AGGREGATIONS)
    # 6 valid tokens; 2 non-empty sequences
    assert aggregation_denominator(MASK, "token_mean").item() == 6
    assert aggregation_denominator(MASK, "seq_mean_token_mean").item() == 2


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_micro_batches_sum_exactly_to_full_batch(mode):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 8, generator=g, dtype=torch.float64)
    lengths = torch.tensor([8, 1, 5, 0, 3, 7])  # unequal, one empty row
    mask = torch.arange(8)[None, :] < lengths[:, None]

    def per_token(x):  # a non-linear per-token loss so gradients depend on x
        return x**2 + torch.sin(x)

    full_x = x0.clone().requires_grad_(True)
    full = aggregate(per_token(full_x), mask, mode, norm_length=8)
    full.backward()

    micro_x = x0.clone().requires_grad_(True)
    denom = aggregation_denominator(mask, mode)
    total = torch.zeros((), dtype=torch.float64)
    for rows in ([0, 1], [2, 3, 4], [5]):
        width = int(lengths[rows].max().clamp(min=1))  # each micro-batch padded to its own length
        part = aggregate(
            per_token(micro_x[rows, :width]), mask[rows, :width], mode, norm_length=8, denominator=denom
        )
        part.backward()  # gradients accumulate as in the trainer
        total = total + part.detach()
    assert_close(total, full.detach(), rtol=1e-12, atol=1e-12)
    assert_close(micro_x.grad, full_x.grad, rtol=1e-12, atol=1e-12)

    # without the shared denominator, averaging micro-batch means is NOT the full-batch loss
    naive = (
        sum(aggregate(per_token(x0[r]), mask[r], mode, norm_length=8) for r in ([0, 1], [2, 3, 4], [5])) / 3
    )
    assert not torch.isclose(naive, full.detach())
