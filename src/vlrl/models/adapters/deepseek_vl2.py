"""DeepSeek-VL2 (deepseek-ai/deepseek-vl2-tiny, -small, -base; arXiv 2412.10302), the MoE VLM of MoERL-Vision.

Inputs (`vlrl.models.deepseek_vl2.processing`): an image becomes a global 384 px view plus local
384 px tiles of the candidate resolution that fits it best (`pixel_values` [tiles, 3, 384, 384],
`images_spatial_crop` [images, 2] = (width tiles, height tiles)); its `<image>` tokens are the
views' 2x2-merged patches row by row, each row closed by a newline embedding, with a view
separator between the global and the local views. Positions are plain 1-D RoPE positions.

The vision cache is the model's own `get_image_features` output (the image tokens in prompt
order, newlines and separators included): the model takes it back as
`mm_encoder_outputs={"image": ...}` in place of pixels.

The decoder is DeepSeekMoE (arXiv 2401.06066): the first `first_k_dense_replace` layers have a
dense MLP, every later one a router (`mlp.gate`, a bare [E, H] weight scoring the E routed
experts), the routed experts (`mlp.experts`, fused 3-D weights) and shared experts
(`mlp.shared_experts`, plain Linear layers that see every token and stay in `language`).
-tiny and -small route by softmax over all experts, keep the top k *without* renormalising and
scale by `routed_scaling_factor` (the original `MoEGate`, deepseek_vl2/models/modeling_deepseek.py);
-base routes DeepSeek-V3's way (sigmoid scores, a selection-only bias, renormalised top k, times
the factor). -small and -base attend with multi-head latent attention (MLA: `q_proj` or
`q_a_proj`/`q_b_proj`, `kv_a_proj_with_mqa`, `kv_b_proj`, `o_proj`), -tiny with standard heads.

Boxes: DeepSeek-VL2 grounds as `<|ref|>object<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>` with
coordinates normalised to 0-999 of the original image (README, "Simple Inference Example";
`deepseek_vl2/serve/app_modules/utils.py` draws `v / 999 * width`): vlrl's `norm999` convention.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from vlrl.models.adapters.base import ModelAdapter, plain_positions
from vlrl.models.deepseek_vl2.processing import select_best_resolution

_MLP = ("gate_proj", "up_proj", "down_proj")


class DeepseekVL2Adapter(ModelAdapter):
    """deepseek-vl2-tiny's architecture: standard multi-head attention (`use_mla` false)."""

    family = "deepseek_vl2"
    box_convention = "norm999"
    module_patterns: ClassVar = {
        "vision": ("vision",),
        # the 2x2-merge MLP and the two learned embeddings that lay the image tokens out
        "connector": ("projector", "image_newline", "view_seperator"),
        "language": ("language",),
        "router": ("language.model.layers.*.mlp.gate",),
        "experts": ("language.model.layers.*.mlp.experts",),
    }
    placeholder_tokens = ("<image>",)
    lora_modules: ClassVar = {
        "vision": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
        # `projector.layers` is Linear, GELU, Linear
        "connector": ("0", "2"),
        # attention, and the dense layers' and shared experts' MLPs
        "language": ("q_proj", "k_proj", "v_proj", "o_proj", *_MLP),
    }
    lora_parameters: ClassVar = {"experts": ("gate_up_proj", "down_proj")}
    vision_keys = ("pixel_values", "images_spatial_crop")
    fixed_resolution = (
        "it cuts every image into tiles of its vision tower's size (384 px for the released checkpoints), "
        "a global view plus the best of the candidate_resolutions of its processor_config.json"
    )

    def image_kwargs(self) -> dict:
        return {}

    def model_image_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of the image inside its local views: scaled to fit the best candidate
        resolution with its aspect ratio kept (PIL's `ImageOps.contain`, which `ImageOps.pad`
        uses), for a prompt of at most two images (more are not tiled)."""
        w, h = size
        cw, ch = select_best_resolution(size, self.processor.candidate_resolutions)
        if w * ch > cw * h:  # wider than the candidate: the width fills it
            return (cw, round(h / w * cw))
        if w * ch < cw * h:
            return (round(w / h * ch), ch)
        return (cw, ch)

    def position_ids(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return plain_positions(batch)

    def route_weights(self, router: nn.Module, logits: Tensor, indices: Tensor) -> Tensor:
        """Routing replay's combine weights [N, k] (`vlrl.models.routing`) from the router's float32
        logits [N, E] at the replayed experts `indices` [N, k], the router's own formula:

        - softmax routing (-tiny, -small; DeepSeek-V2's `MoEGate`): softmax over all E experts,
          gathered, not renormalised, times `routed_scaling_factor`;
        - the routers with DeepSeek-V3's selection bias (`e_score_correction_bias`, -base): sigmoid
          scores gathered, renormalised (+1e-20, as transformers) when `norm_topk_prob`, times the
          factor (the bias only selects, so it has no part here).
        """
        logits = logits.float()
        if hasattr(router, "e_score_correction_bias"):
            weights = logits.sigmoid().gather(1, indices)
            if router.norm_topk_prob:
                weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        else:
            weights = logits.softmax(dim=-1).gather(1, indices)
        return weights * router.routed_scaling_factor


class DeepseekVL2MlaAdapter(DeepseekVL2Adapter):
    """deepseek-vl2-small and -base: multi-head latent attention (DeepSeek-V2, arXiv 2405.04434),
    whose projections LoRA adapts: the query (`q_proj`, or `q_a_proj` -> `q_b_proj` where the
    query is compressed, `q_lora_rank`), the joint KV compression and rotary key
    (`kv_a_proj_with_mqa`), its up-projection to keys and values (`kv_b_proj`) and `o_proj`."""

    family = "deepseek_vl2_mla"
    lora_modules: ClassVar = {
        **DeepseekVL2Adapter.lora_modules,
        "language": ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", *_MLP),
    }


class DeepseekVL2BaseAdapter(DeepseekVL2MlaAdapter):
    """deepseek-vl2 (-base): MLA with DeepSeek-V3's routing ("noaux_tc"): sigmoid expert scores,
    so the router-entropy metrics normalise sigmoid scores (`router_scores`)."""

    family = "deepseek_vl2_base"
    router_scores = "sigmoid"
