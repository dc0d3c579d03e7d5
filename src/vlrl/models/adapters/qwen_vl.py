"""Qwen2-VL and Qwen2.5-VL: native-resolution patches, 2x2 token merge, M-RoPE positions.

Images are resized to multiples of 28 pixels within a pixel budget, cut into 14x14 patches that
arrive flattened as `pixel_values` [num_patches, C*T*14*14] with `image_grid_thw` [num_images, 3];
each 2x2 group of patches becomes one `<|image_pad|>` token. The language model uses 3-D
(temporal, height, width) rotary positions, which the model derives from `mm_token_type_ids`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from vlrl.models.adapters.base import ModelAdapter, unwrap

_LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Qwen2VLAdapter(ModelAdapter):
    family = "qwen2_vl"
    # Qwen2-VL was trained on boxes normalised to 0-1000 (its `<|box_start|>(x1,y1),(x2,y2)` format).
    box_convention = "norm1000"
    module_patterns: ClassVar = {
        "vision": ("model.visual",),
        "connector": ("model.visual.merger",),
        "language": ("model.language_model", "lm_head"),
    }
    placeholder_tokens = (
        "<|image_pad|>",
        "<|video_pad|>",
        "<|vision_pad|>",
        "<|vision_start|>",
        "<|vision_end|>",
    )
    lora_modules: ClassVar = {
        "vision": ("qkv", "proj", "fc1", "fc2", "gate_proj", "up_proj", "down_proj"),
        "connector": ("0", "2"),
        "language": _LANGUAGE_LINEARS,
    }
    vision_keys = ("pixel_values", "image_grid_thw")
    token_keys = ("input_ids", "attention_mask", "mm_token_type_ids")

    def _bounds(self) -> tuple[int, int]:
        size = self.processor.image_processor.size
        return (self.min_pixels or size["shortest_edge"], self.max_pixels or size["longest_edge"])

    def image_kwargs(self) -> dict:
        if self.min_pixels is None and self.max_pixels is None:
            return {}
        lo, hi = self._bounds()
        return {"size": {"shortest_edge": lo, "longest_edge": hi}}

    def model_image_size(self, size: tuple[int, int]) -> tuple[int, int]:
        ip = self.processor.image_processor
        lo, hi = self._bounds()
        h, w = smart_resize(
            size[1], size[0], factor=ip.patch_size * ip.merge_size, min_pixels=lo, max_pixels=hi
        )
        return (w, h)

    def position_ids(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[3, B, L] M-RoPE positions: text tokens advance all three axes, image tokens spread over h/w."""
        positions, _ = unwrap(model).model.get_rope_index(
            input_ids=batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"),
            attention_mask=batch["attention_mask"],
        )
        return positions


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    # Qwen2.5-VL grounds in absolute pixels of the image after the processor's resize.
    box_convention = "resized_abs"
