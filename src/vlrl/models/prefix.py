"""One forward pass over shared prompts, whose KV cache many continuations then extend.

GRPO's G completions of a prompt share that prompt: its image, its system prompt, its question.
Both the rollout (sampling G continuations) and the policy update (scoring them) run the prompt
and its vision tower once, then continue each row from its prompt's cache. The continuation sees
exactly the keys and values a full prompt + response pass would compute (a causal model's
prompt positions never look at the response), so this is the same function, not an
approximation; under autograd the gradient of the shared prompt sums over its rows, which is
what the G separate passes would have accumulated.

Positions are explicit: after a prompt's last token all M-RoPE axes advance together, so the
continuation's position t is the prompt's last position + 1 + t on every axis, for [3, B, L]
M-RoPE positions and plain [B, L] ones alike.

Hybrid models (Qwen3.5's Gated-DeltaNet layers) keep, per linear-attention layer, a conv state
(the last kernel-size inputs) and a recurrent state in place of keys and values; they are a
prompt's summary just as its keys and values are, so each row gets its prompt's copy
(`RowStatesLayer`). Left padding in the prefill is exact for them too: transformers zeroes padded
positions before the layer's projections, so the state a prompt's first real token meets is the
zero state it would meet unpadded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, LinearAttentionLayer

from vlrl.models.adapters import ModelAdapter, VisionCache
from vlrl.models.batching import Encoded, collate


@dataclass
class Prefix:
    """The state after a left-padded forward pass over B prompts.

    `logits` [B, V]: next-token logits after each prompt; `cache`: their KV cache;
    `attention_mask` [B, L]; `last_position` [3, B, 1] (M-RoPE) or [B, 1].
    """

    logits: Tensor
    cache: DynamicCache
    attention_mask: Tensor
    last_position: Tensor

    def select(self, rows: Tensor) -> Prefix:
        """The state for rows of prompts `rows` ([R] prompt indices, repeats allowed), in that order.

        The cache is re-indexed in place (it is this prefix's, now the rows'); under autograd the
        indexing is differentiable, so every row's gradient reaches its prompt. Linear-attention
        layers become `RowStatesLayer`s, whose states can be re-indexed and stay differentiable.
        """
        for i, layer in enumerate(self.cache.layers):
            if type(layer) is LinearAttentionLayer:
                layer = self.cache.layers[i] = RowStatesLayer(layer)
            if not hasattr(layer, "batch_select_indices"):
                raise TypeError(
                    f"cache layer {i} ({type(layer).__name__}) cannot be re-indexed per row: its family "
                    "must declare shared_prefix = False (ModelAdapter) so that it is scored by padded passes"
                )
            layer.batch_select_indices(rows)
        return Prefix(
            logits=self.logits.index_select(0, rows),
            cache=self.cache,
            attention_mask=self.attention_mask.index_select(0, rows),
            last_position=self.last_position.index_select(-2, rows),
        )

    def reserve(self, tokens: int) -> None:
        """Give every plain layer of the cache room for `tokens` more positions (`ReservedLayer`),
        so that decoding appends in place instead of copying the whole cache at every token.
        Linear-attention layers have fixed-size states and nothing to reserve."""
        for i, layer in enumerate(self.cache.layers):
            if type(layer) is DynamicLayer and layer.is_initialized:
                self.cache.layers[i] = ReservedLayer(layer, tokens)

    def positions(self, steps: int, offset: int = 0) -> Tensor:
        """Positions of continuation tokens offset .. offset + steps - 1: [3, R, steps] or [R, steps]."""
        ahead = torch.arange(offset + 1, offset + 1 + steps, device=self.last_position.device)
        return self.last_position + ahead


def prefill(
    model: nn.Module,
    adapter: ModelAdapter,
    prompts: list[Encoded],
    pad_id: int,
    vision: VisionCache | None = None,
) -> Prefix:
    """Run `prompts` once (left-padded, vision tower included) and keep their cache.

    With `vision` (the prompts' images, in order) the vision tower is skipped, as in
    `response_logprobs`.
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(prompts, pad_id, padding_side="left").items()}
    if vision is None:
        inputs = {**batch, "position_ids": adapter.position_ids(model, batch)}
    else:
        inputs = adapter.cached_inputs(model, batch, vision)
    cache = DynamicCache(config=model.config)
    logits = model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    return Prefix(logits, cache, batch["attention_mask"], inputs["position_ids"][..., -1:])


class ReservedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with spare positions.

    `DynamicLayer.update` concatenates, copying the layer's whole cache for every decoded token:
    O(L) memory traffic per token, which dominates a CPU decode step at a few hundred rows. Here a
    token is written into the spare room, and a full buffer doubles its room (amortised O(1)).
    """

    def __init__(self, layer: DynamicLayer, tokens: int):
        super().__init__()
        # From the tensors: transformers >= 5.25 no longer keeps a layer's dtype as an attribute.
        self.dtype, self.device, self.is_initialized = layer.keys.dtype, layer.keys.device, True
        self.length = layer.keys.shape[-2]
        self.key_buffer = _with_room(layer.keys, tokens)
        self.value_buffer = _with_room(layer.values, tokens)
        self.keys = self.key_buffer[..., : self.length, :]
        self.values = self.value_buffer[..., : self.length, :]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            room = max(end - self.length, self.key_buffer.shape[-2])
            self.key_buffer, self.value_buffer = _with_room(self.keys, room), _with_room(self.values, room)
        self.key_buffer[..., self.length : end, :] = key_states
        self.value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self.keys = self.key_buffer[..., :end, :]
        self.values = self.value_buffer[..., :end, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: Tensor) -> None:
        self.key_buffer = self.key_buffer[indices, ...]
        self.value_buffer = self.value_buffer[indices, ...]
        self.keys = self.key_buffer[..., : self.length, :]
        self.values = self.value_buffer[..., : self.length, :]


class RowStatesLayer(LinearAttentionLayer):
    """A linear-attention cache layer (conv and recurrent states, transformers'
    `LinearAttentionLayer`) that can be re-indexed per row and differentiated through.

    transformers' layer has no `batch_select_indices`, and it overwrites its states in place
    (`copy_`) at every update, which autograd refuses once a state has been read by an operation
    that saved it for backward, as the gated delta rule saves its initial state. Here rows
    index-select the states, and an update replaces a state by the new tensor instead of writing
    into the old one; the numbers are transformers' own.
    """

    def __init__(self, layer: LinearAttentionLayer):
        super().__init__(number_of_states=layer.number_of_states)
        if layer.record_past:
            raise ValueError("a linear-attention layer that records its past cannot be shared by rows")
        # The prefill's states and bookkeeping, as transformers' layer left them.
        for name in (
            "conv_states",
            "recurrent_states",
            "is_conv_states_initialized",
            "is_recurrent_states_initialized",
            "has_previous_state",
            "conv_kernel_size",
        ):
            setattr(self, name, dict(getattr(layer, name)))
        self.cumulative_length_linear = layer.cumulative_length_linear.clone()
        self.device, self.dtype = layer.device, layer.dtype

    def batch_select_indices(self, indices: Tensor) -> None:
        for i in range(self.number_of_states):
            if self.is_conv_states_initialized[i]:
                self.conv_states[i] = self.conv_states[i].index_select(0, indices)
            if self.is_recurrent_states_initialized[i]:
                self.recurrent_states[i] = self.recurrent_states[i].index_select(0, indices)

    def update_conv_state(self, conv_states: Tensor, state_idx: int = 0, **kwargs) -> Tensor:
        """The conv inputs of new tokens [R, C, T] -> the conv's full input: the kept state + them."""
        if not self.has_previous_state[state_idx]:
            return super().update_conv_state(conv_states, state_idx, **kwargs)
        if state_idx == 0:
            self.cumulative_length_linear = self.cumulative_length_linear + conv_states.shape[-1]
        full = torch.cat([self.conv_states[state_idx], conv_states], dim=-1)
        self.conv_states[state_idx] = full[..., -self.conv_kernel_size[state_idx] :]
        return full

    def update_recurrent_state(self, recurrent_states, state_idx: int = 0, **kwargs) -> Tensor:
        """The state after the new tokens (or the list of the last few, of which the last counts)."""
        if not self.is_recurrent_states_initialized[state_idx]:
            return super().update_recurrent_state(recurrent_states, state_idx, **kwargs)
        last = recurrent_states if isinstance(recurrent_states, Tensor) else recurrent_states[-1]
        self.recurrent_states[state_idx] = last.to(self.recurrent_states[state_idx].dtype)
        return self.recurrent_states[state_idx]


def _with_room(states: Tensor, tokens: int) -> Tensor:
    """[B, H, L, D] -> [B, H, L + tokens, D] with `states` first and the rest uninitialised."""
    B, H, L, D = states.shape
    buffer = states.new_empty(B, H, L + tokens, D)
    buffer[..., :L, :] = states
    return buffer
