"""Qwen3-VL (dense: 2B-32B) and Qwen3-VL-MoE (30B-A3B, 235B-A22B) on transformers' own classes.

Inputs are Qwen2-VL's (arXiv 2511.21631, the Qwen3-VL technical report): images resized to
multiples of 32 pixels (16 px patches, 2x2 merge) within a pixel budget, flattened into
`pixel_values` [num_patches, 3*2*16*16] with `image_grid_thw` [num_images, 3], one
`<|image_pad|>` per merged 2x2 group, and 3-D M-RoPE positions (interleaved over t/h/w in
Qwen3-VL) from `mm_token_type_ids` and the grids; padding is handled as in Qwen2-VL, so
`position_ids` is the parent's. Two differences matter here:
- DeepStack (arXiv 2406.04334): the vision tower also returns the merged features of some of its
  layers (`deepstack_features`, one tensor per tapped layer), which the language model adds to its
  first layers' hidden states at the image tokens. The vision cache keeps them beside the final
  features, or a cached pass would silently differ from a pass with pixels;
- the connector is the final merger and the deepstack mergers together: all of them turn vision
  features into language-model inputs.

Boxes: Qwen3-VL grounds in coordinates normalised to 0-1000 of the image, whatever its size
(QwenLM/Qwen3-VL README, "Coordinate System: Qwen3-VL's default coordinate system has been changed
from the absolute coordinates used in Qwen2.5-VL to relative coordinates ranging from 0 to 1000";
examples in its cookbooks/spatial_understanding.ipynb).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from vlrl.models.adapters.qwen_vl import _LANGUAGE_LINEARS, Qwen2VLAdapter

_VISION = ("model.visual",)
_CONNECTOR = ("model.visual.merger", "model.visual.deepstack_merger_list")
_LANGUAGE = ("model.language_model", "lm_head")


def softmax_top_weights(logits: Tensor, indices: Tensor, normalise: bool = True) -> Tensor:
    """Qwen3-MoE's combine weights of experts `indices` [N, k] from router logits [N, E]: softmax
    over all E experts in float32, the k chosen probabilities, renormalised to sum 1 when
    `normalise` (`norm_topk_prob`), in the logits' dtype: transformers' Qwen3 routers' own steps."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float).gather(1, indices)
    if normalise:
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs.to(logits.dtype)


class Qwen3VLAdapter(Qwen2VLAdapter):
    family = "qwen3_vl"
    box_convention = "norm1000"
    module_patterns: ClassVar = {"vision": _VISION, "connector": _CONNECTOR, "language": _LANGUAGE}
    lora_modules: ClassVar = {
        # the vision blocks' attention and MLP (the mergers' linear_fc1/2 are the connector's)
        "vision": ("qkv", "proj", "linear_fc1", "linear_fc2"),
        "connector": ("linear_fc1", "linear_fc2"),
        "language": _LANGUAGE_LINEARS,
    }
    vision_output_fields = ("pooler_output", "deepstack_features")


class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    """Qwen3-VL-MoE: every decoder layer's MLP is a sparse block `mlp` of a router `mlp.gate`
    and fused experts `mlp.experts` (`gate_up_proj` [E, 2I, H], `down_proj` [E, H, I]); no shared
    expert, no dense layers (decoder_sparse_step 1, mlp_only_layers []).

    Router (transformers' `Qwen3VLMoeTextTopKRouter`, as in Qwen3, arXiv 2505.09388): logits =
    W h, softmax over all experts, top-k of the probabilities, then the k weights renormalised to
    sum to 1. The router is its own group (freezable, its own learning rate); it has no LoRA
    target (its weight is one [E, H] matrix: train it in full or freeze it). The experts' LoRA
    targets are the fused weights, through peft's `target_parameters` (peft requires
    lora_dropout 0 for them).

    Layouts: the Hub's Qwen3-VL-MoE files hold the experts transposed ([E, H, 2I], [E, I, H]);
    transformers 5.25 transposes them at load when the shapes say so (its conversion_mapping,
    huggingface/transformers#43956) and `save_pretrained` writes the in-memory layout.
    """

    family = "qwen3_vl_moe"
    router_loss = True
    module_patterns: ClassVar = {
        "vision": _VISION,
        "connector": _CONNECTOR,
        "language": _LANGUAGE,
        "router": ("model.language_model.layers.*.mlp.gate",),
        "experts": ("model.language_model.layers.*.mlp.experts",),
    }
    lora_parameters: ClassVar = {"experts": ("gate_up_proj", "down_proj")}

    def route_weights(self, router: nn.Module, logits: Tensor, indices: Tensor) -> Tensor:
        """Routing replay's combine weights [N, k] (`vlrl.models.routing`): softmax -> gather ->
        renormalise (Qwen3VLMoeTextTopKRouter always renormalises)."""
        return softmax_top_weights(logits, indices)
