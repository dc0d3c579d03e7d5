"""The reserved KV-cache layer behaves like transformers' DynamicLayer, without re-concatenating."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from vlrl.models.prefix import ReservedLayer


def test_reserved_layer_matches_a_dynamic_layer_through_growth_and_row_selection():
    g = torch.Generator().manual_seed(0)
    plain = DynamicLayer()
    plain.update(torch.randn(3, 2, 5, 4, generator=g), torch.randn(3, 2, 5, 4, generator=g))
    reserved = ReservedLayer(plain, tokens=2)
    buffer = reserved.key_buffer
    for step in range(7):  # room for 2: the buffer must grow (twice) on the way
        k, v = torch.randn(3, 2, 1, 4, generator=g), torch.randn(3, 2, 1, 4, generator=g)
        expected = plain.update(k, v)
        got = reserved.update(k, v)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), step
        if step == 1:
            assert reserved.key_buffer is buffer  # appended in place while there was room
    assert reserved.get_seq_length() == plain.get_seq_length() == 12
    rows = torch.tensor([2, 0, 2])
    plain.batch_select_indices(rows)
    reserved.batch_select_indices(rows)
    k, v = torch.randn(3, 2, 1, 4, generator=g), torch.randn(3, 2, 1, 4, generator=g)
    assert torch.equal(reserved.update(k, v)[0], plain.update(k, v)[0])
