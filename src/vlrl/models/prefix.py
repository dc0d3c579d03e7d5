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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from vlrl.models.adapters import ModelAdapter
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
        indexing is differentiable, so every row's gradient reaches its prompt.
        """
        self.cache.batch_select_indices(rows)
        return Prefix(
            logits=self.logits.index_select(0, rows),
            cache=self.cache,
            attention_mask=self.attention_mask.index_select(0, rows),
            last_position=self.last_position.index_select(-2, rows),
        )

    def positions(self, steps: int, offset: int = 0) -> Tensor:
        """Positions of continuation tokens offset .. offset + steps - 1: [3, R, steps] or [R, steps]."""
        ahead = torch.arange(offset + 1, offset + 1 + steps, device=self.last_position.device)
        return self.last_position + ahead


def prefill(
    model: nn.Module,
    adapter: ModelAdapter,
    prompts: list[Encoded],
    pad_id: int,
    image_features: Tensor | None = None,
) -> Prefix:
    """Run `prompts` once (left-padded, vision tower included) and keep their cache.

    With `image_features` ([N, hidden], the prompts' image tokens in order) the vision tower is
    skipped and `adapter.embed` places them, as in `response_logprobs`.
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(prompts, pad_id, padding_side="left").items()}
    if image_features is None:
        inputs = {**batch, "position_ids": adapter.position_ids(model, batch)}
    else:
        inputs = adapter.embed(model, batch, image_features.to(device))
    cache = DynamicCache(config=model.config)
    logits = model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    return Prefix(logits, cache, batch["attention_mask"], inputs["position_ids"][..., -1:])
