"""The shared-prefix cache layers behave like transformers' own: the reserved KV layer like
`DynamicLayer` without re-concatenating, the row-states layer like `LinearAttentionLayer`, re-indexed
per row and differentiable."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer, LinearAttentionLayer

from vlrl.models.prefix import ReservedLayer, RowStatesLayer


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


def _prefilled_linear_layer(g: torch.Generator, leaf: torch.Tensor) -> LinearAttentionLayer:
    """transformers' linear-attention cache layer after a 5-token prefill of 2 prompts: conv inputs
    [2, 6 channels, 5], recurrent state [2, 3 heads, 4, 4], both functions of `leaf`."""
    layer = LinearAttentionLayer()
    layer.update_conv_state(torch.randn(2, 6, 5, generator=g) * leaf, conv_kernel_size=4)
    layer.update_recurrent_state(torch.randn(2, 3, 4, 4, generator=g) * leaf)
    return layer


def test_row_states_layer_matches_transformers_linear_layer_through_rows_and_updates():
    g = torch.Generator().manual_seed(0)
    plain = _prefilled_linear_layer(g, torch.ones(()))
    rows = torch.tensor([1, 0, 1])
    row = RowStatesLayer(plain)
    row.batch_select_indices(rows)
    plain.reorder_cache(rows)  # transformers' own per-row re-index (beam search)
    assert torch.equal(row.conv_states[0], plain.conv_states[0])
    assert torch.equal(row.recurrent_states[0][0], row.recurrent_states[0][2])  # rows of one prompt
    for step in range(3):  # a 2-token continuation, then single tokens
        conv = torch.randn(3, 6, 2 if step == 0 else 1, generator=g)
        state = torch.randn(3, 3, 4, 4, generator=g)
        assert torch.equal(row.update_conv_state(conv), plain.update_conv_state(conv)), step
        assert torch.equal(row.update_recurrent_state(state), plain.update_recurrent_state(state)), step
        assert torch.equal(row.conv_states[0], plain.conv_states[0]), step
    assert int(row.get_seq_length()) == int(plain.get_seq_length()) == 5 + 2 + 1 + 1


def test_row_states_stay_differentiable_where_transformers_layer_overwrites_them():
    """A continuation reads its rows' recurrent state in ops that keep it for backward, then the
    cache stores the next state. transformers' layer writes it into the old tensor (autograd then
    refuses the backward); `RowStatesLayer` replaces it, and every row's gradient reaches the prompt."""
    leaf = torch.ones((), requires_grad=True)
    rows = torch.tensor([1, 0, 1])
    g = torch.Generator().manual_seed(0)
    plain = _prefilled_linear_layer(g, leaf)
    plain.reorder_cache(rows)
    read = (plain.recurrent_states[0] ** 2).sum()  # saves the state for backward
    plain.update_recurrent_state(torch.zeros(3, 3, 4, 4))
    with pytest.raises(RuntimeError, match="inplace operation"):
        read.backward()

    g = torch.Generator().manual_seed(0)
    row = RowStatesLayer(_prefilled_linear_layer(g, leaf))
    row.batch_select_indices(rows)
    read = (row.recurrent_states[0] ** 2).sum()
    row.update_recurrent_state(torch.zeros(3, 3, 4, 4))
    read.backward()
    g = torch.Generator().manual_seed(0)
    torch.randn(2, 6, 5, generator=g)
    state = torch.randn(2, 3, 4, 4, generator=g)
    # d/dleaf of sum over rows [1, 0, 1] of (leaf * state[row])^2 at leaf = 1
    expected = 2 * (state[1] ** 2).sum() * 2 + 2 * (state[0] ** 2).sum()
    torch.testing.assert_close(leaf.grad, expected)
