"""Idefics3 (and SmolVLM, which shares its architecture): SigLIP tiles, pixel-shuffle connector, Llama.

The processor resizes an image to the vision tower's tile (optionally also cutting it into a grid
of tiles) and writes each tile as `<fake_token_around_image><global-img>` + `image_seq_len`
`<image>` tokens. Pixels arrive per sample as `pixel_values` [1, images, 3, S, S] with
`pixel_attention_mask` [1, images, S, S]; a batch pads the image axis with all-zero images, which
the model drops. The language model is a plain decoder with ordinary 1-D positions.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from vlrl.models.adapters.base import ModelAdapter, plain_positions


class Idefics3Adapter(ModelAdapter):
    family = "idefics3"
    # Idefics3 has no grounding format of its own; 0-1000 boxes survive its square resize unchanged.
    box_convention = "norm1000"
    module_patterns: ClassVar = {
        "vision": ("model.vision_model",),
        "connector": ("model.connector",),
        "language": ("model.text_model", "lm_head"),
    }
    placeholder_tokens = ("<image>", "<fake_token_around_image>", "<global-img>")
    lora_modules: ClassVar = {
        "vision": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
        "connector": ("proj",),
        "language": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    }
    vision_keys = ("pixel_values", "pixel_attention_mask")
    fixed_resolution = "it resizes every image to its tile size (max_image_size in the checkpoint's preprocessor_config.json)"

    def _tile(self) -> int:
        return self.processor.image_processor.max_image_size["longest_edge"]

    def image_kwargs(self) -> dict:
        return {}

    def model_image_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return (self._tile(), self._tile())

    def position_ids(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return plain_positions(batch)
