"""InternVL (transformers' native InternVL / InternVL3-hf): fixed-size tiles, pixel shuffle, 1-D RoPE.

Unlike Qwen, an image is cut into up to `max_patches` square tiles of the vision tower's input
size plus a thumbnail (`pixel_values` [num_tiles, 3, S, S]); each tile becomes a fixed
`image_seq_length` of `<IMG_CONTEXT>` tokens between `<img>` and `</img>`. The language model is
a plain decoder with ordinary 1-D positions.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from vlrl.models.adapters.base import ModelAdapter, plain_positions
from vlrl.models.adapters.qwen3_vl import softmax_top_weights


class InternVLAdapter(ModelAdapter):
    family = "internvl"
    # InternVL's grounding data writes boxes normalised to 0-1000.
    box_convention = "norm1000"
    module_patterns: ClassVar = {
        "vision": ("model.vision_tower",),
        "connector": ("model.multi_modal_projector",),
        "language": ("model.language_model", "lm_head"),
    }
    placeholder_tokens = ("<IMG_CONTEXT>", "<img>", "</img>", "<video>")
    lora_modules: ClassVar = {
        "vision": ("q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2"),
        "connector": ("linear_1", "linear_2"),
        "language": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    }
    vision_keys = ("pixel_values",)

    def _tile(self) -> int:
        return self.processor.image_processor.size["height"]

    def image_kwargs(self) -> dict:
        # InternVL bounds resolution by tile count, not pixels: translate the pixel budget.
        if self.max_pixels is None:
            return {}
        return {"max_patches": max(1, self.max_pixels // self._tile() ** 2)}

    def model_image_size(self, size: tuple[int, int]) -> tuple[int, int]:
        # Normalised 0-1000 boxes do not depend on the tiling; report the thumbnail size.
        return (self._tile(), self._tile())

    def position_ids(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return plain_positions(batch)


class InternVLMoeAdapter(InternVLAdapter):
    """InternVL3.5-MoE (InternVL3_5-30B-A3B-HF, 241B-A28B-HF): InternVL around a Qwen3-MoE language model.

    The checkpoint is `model_type` internvl with a `qwen3_moe` text config (picked by
    `adapters.adapter_for`). Each decoder layer's router (`mlp.gate`, a bare [E, H] weight)
    softmaxes over all E experts, keeps the top k and renormalises them to sum to 1
    (`norm_topk_prob`; transformers' `Qwen3MoeTopKRouter`); the routed experts (`mlp.experts`)
    hold fused 3-D weights (`gate_up_proj` [E, 2I, H], `down_proj` [E, H, I]), adapted by LoRA
    through peft's `target_parameters`. Qwen3-MoE has no shared experts; layers listed in
    `mlp_only_layers` keep a dense MLP (gate/up/down Linear layers), which stays in `language`.
    InternVL3_5-30B-A3B: 128 experts, top 8, 48 layers.
    """

    family = "internvl_moe"
    module_patterns: ClassVar = {
        **InternVLAdapter.module_patterns,
        "router": ("model.language_model.layers.*.mlp.gate",),
        "experts": ("model.language_model.layers.*.mlp.experts",),
    }
    lora_parameters: ClassVar = {"experts": ("gate_up_proj", "down_proj")}

    def route_weights(self, router: nn.Module, logits: Tensor, indices: Tensor) -> Tensor:
        """Routing replay's combine weights [N, k] (`vlrl.models.routing`): softmax -> gather ->
        renormalise when the checkpoint says `norm_topk_prob` (Qwen3MoeTopKRouter)."""
        return softmax_top_weights(logits, indices, router.norm_topk_prob)
