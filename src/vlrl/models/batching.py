"""Per-sample model inputs and the family-agnostic collate that batches them.

Samples are encoded one at a time (so a micro-batch can be any subset, re-collated freely, as
MAYE does) and batched here. Two kinds of tensors exist in every family:
- token-aligned ones (`input_ids`, `attention_mask`, Qwen's `mm_token_type_ids`): shape [L],
  padded to the longest sample;
- vision ones (Qwen's flattened patches + `image_grid_thw`, InternVL's tiles): concatenated
  along dim 0 in sample order, which is how every supported family batches images. Idefics3's
  per-sample [1, images, ...] tensors differ in their image axis between samples; they are padded
  there with all-zero images, as its own processor does (the model drops those).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image


@dataclass(frozen=True)
class PromptSource:
    """What a prompt was encoded from, for engines that run their own processor (vLLM, a
    generation server): the chat `messages` ({"type": "image"} parts stand for `images`, in
    order), their chat-template `text` (image markers unexpanded) and the `images`."""

    messages: list[dict]
    text: str
    images: list[Image.Image]


@dataclass
class Encoded:
    """One sample's inputs, without batch dimension.

    `tokens` maps token-aligned keys to [L] tensors; `vision` maps vision keys to tensors whose
    dim 0 indexes patches/tiles/images. `prompt_length` is the number of leading prompt tokens;
    positions from there on are the response (trained on in SFT and RL). `source` is set for
    prompts encoded from chat messages.
    """

    tokens: dict[str, torch.Tensor]
    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    prompt_length: int = 0
    source: PromptSource | None = None

    @property
    def length(self) -> int:
        return int(self.tokens["input_ids"].shape[0])

    def with_response(self, response_ids: torch.Tensor) -> Encoded:
        """This prompt followed by `response_ids` ([T] token ids, no image tokens)."""
        n = response_ids.shape[0]
        extra = {
            "input_ids": response_ids.to(self.tokens["input_ids"].dtype),
            "attention_mask": torch.ones(n, dtype=self.tokens["attention_mask"].dtype),
            "mm_token_type_ids": torch.zeros(n, dtype=torch.int32),
        }
        tokens = {k: torch.cat([v, extra[k].to(v.dtype)]) for k, v in self.tokens.items()}
        return Encoded(
            tokens=tokens, vision=self.vision, prompt_length=self.prompt_length, source=self.source
        )


def collate(items: list[Encoded], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Batch `items` into model inputs: token keys padded to [B, L], vision keys concatenated.

    Left padding is what generation needs (new tokens append on the right of every row);
    right padding keeps response positions aligned for loss computation.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(e.length for e in items)
    batch: dict[str, torch.Tensor] = {}
    for key in items[0].tokens:
        fill = pad_id if key == "input_ids" else 0
        rows = []
        for e in items:
            row = e.tokens[key]
            pad = row.new_full((width - row.shape[0],), fill)
            rows.append(torch.cat([pad, row] if padding_side == "left" else [row, pad]))
        batch[key] = torch.stack(rows)
    # Text-only samples have no vision tensors; batch whatever the image-bearing ones have.
    for key in dict.fromkeys(k for e in items for k in e.vision):
        parts = [e.vision[key] for e in items if key in e.vision]
        batch[key] = torch.cat(_pad_to_common_shape(parts))
    return batch


def _pad_to_common_shape(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zero-pad every dim but the first to the largest size among `parts` (a no-op when equal)."""
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
    out = []
    for p in parts:
        pad = []
        for d in reversed(range(1, p.dim())):
            pad += [0, shape[d - 1] - p.shape[d]]
        out.append(torch.nn.functional.pad(p, pad) if any(pad) else p)
    return out
