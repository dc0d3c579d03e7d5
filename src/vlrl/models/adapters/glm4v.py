"""GLM-4.1V-Thinking (`glm4v`, dense) and GLM-4.5V (`glm4v_moe`, Mixture-of-Experts).

GLM-V report: arXiv 2507.01006; transformers' `models/glm4v` and `models/glm4v_moe`.

Inputs are Qwen2-VL's in shape: an image is resized to multiples of 28 px within a pixel budget
and cut into 14 px patches in temporal pairs (`pixel_values` [num_patches, 3*2*14*14],
`image_grid_thw` [num_images, 3]); the vision tower (AIMv2-style, with its learned position
grid resampled to each image) ends in the connector, a 2x2 strided convolution (`downsample`)
and a SwiGLU projector (`merger`); each 2x2 patch group becomes one `<|image|>` token between
`<|begin_of_image|>` and `<|end_of_image|>`. GLM's resize budget counts the temporal pair
(t x h x w with t = 2), so vlrl's pixel bounds (of the image) are doubled for the processor.

Positions: 3-D rotary positions (time, height, width) on half of each head
(`partial_rotary_factor` 0.5), which the model derives from `mm_token_type_ids`; an image of
h x w patches spans max(h, w) / 2 positions and text continues after it on all three axes, so a
prompt's cache is continued as for Qwen2-VL (`vlrl.models.prefix`): `shared_prefix` holds.

Boxes: GLM-4.xV grounds in `[x1, y1, x2, y2]` normalised by the image's width and height and
scaled to 1000, written between `<|begin_of_box|>` and `<|end_of_box|>` (GLM-V README,
"Grounding": https://github.com/zai-org/GLM-V#grounding): vlrl's `norm1000` convention.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from transformers.models.glm4v.image_processing_pil_glm4v import smart_resize

from vlrl.models.adapters.base import ModelAdapter, unwrap


class Glm4vAdapter(ModelAdapter):
    family = "glm4v"
    box_convention = "norm1000"
    module_patterns: ClassVar = {
        "vision": ("model.visual",),
        # the projector from vision width to language width: patch merge, then SwiGLU
        "connector": ("model.visual.downsample", "model.visual.merger"),
        "language": ("model.language_model", "lm_head"),
    }
    placeholder_tokens = (
        "<|image|>",
        "<|video|>",
        "<|begin_of_image|>",
        "<|end_of_image|>",
        "<|begin_of_video|>",
        "<|end_of_video|>",
    )
    lora_modules: ClassVar = {
        "vision": ("qkv", "proj", "gate_proj", "up_proj", "down_proj"),
        # `downsample` is a convolution: LoRA adapts the projector's linear layers
        "connector": ("proj", "gate_proj", "up_proj", "down_proj"),
        # GLM-4's MLP fuses gate and up into one Linear
        "language": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
    }
    vision_keys = ("pixel_values", "image_grid_thw")
    token_keys = ("input_ids", "attention_mask", "mm_token_type_ids")

    @property
    def _temporal(self) -> int:
        return self.processor.image_processor.temporal_patch_size

    def _bounds(self) -> tuple[int, int]:
        """(min, max) pixels of the image: the processor's t x h x w budget divided by t."""
        size = self.processor.image_processor.size
        lo = self.min_pixels or size["shortest_edge"] // self._temporal
        hi = self.max_pixels or size["longest_edge"] // self._temporal
        return lo, hi

    def image_kwargs(self) -> dict:
        if self.min_pixels is None and self.max_pixels is None:
            return {}
        lo, hi = self._bounds()
        return {"size": {"shortest_edge": lo * self._temporal, "longest_edge": hi * self._temporal}}

    def model_image_size(self, size: tuple[int, int]) -> tuple[int, int]:
        ip = self.processor.image_processor
        lo, hi = self._bounds()
        h, w = smart_resize(
            num_frames=ip.temporal_patch_size,
            height=size[1],
            width=size[0],
            temporal_factor=ip.temporal_patch_size,
            factor=ip.patch_size * ip.merge_size,
            min_pixels=lo * ip.temporal_patch_size,
            max_pixels=hi * ip.temporal_patch_size,
        )
        return (w, h)

    def position_ids(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[3, B, L] positions counting only real tokens (left or right padding alike): text
        advances all three axes, image tokens spread over height and width."""
        positions, _ = unwrap(model).model.get_rope_index(
            input_ids=batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"),
            attention_mask=batch["attention_mask"],
        )
        return positions


class Glm4vMoeAdapter(Glm4vAdapter):
    """GLM-4.5V: GLM-4.1V's vision side on GLM-4.5-Air's MoE decoder (106B total, 12B active).

    The router (`mlp.gate`, after DeepSeek-V3, arXiv 2412.19437) scores every routed expert with
    a sigmoid of a float32 linear map, s = sigmoid(W h). Selection alone adds a per-expert
    correction bias b (`e_score_correction_bias`, a buffer: DeepSeek-V3's auxiliary-loss-free
    balancing adjusts it outside gradient descent, so it never trains here and stays bit-identical):
    grouped top-k splits the experts into `n_group` groups, ranks the groups by the sum of their
    two best s + b, keeps the best `topk_group` groups and picks the `num_experts_per_tok` best
    s + b among their experts. The mixing weights are the unbiased s of the chosen experts,
    renormalised to sum 1 (`norm_topk_prob`) and scaled by `routed_scaling_factor`. Every token
    also goes through the shared experts (`mlp.shared_experts`, a plain MLP that stays in the
    language group), and the first `first_k_dense_replace` layers have a dense MLP instead
    (GLM-4.5V: 1 dense layer, then 45 layers of 128 routed experts, top-8, one group, 1 shared;
    GLM-4.5 report, arXiv 2508.06471).

    Groups: `router` holds each MoE layer's `gate.weight`; `experts` the fused routed-expert
    weights (`gate_up_proj` [E, 2I, H], `down_proj` [E, H, I]), which LoRA adapts through peft's
    `target_parameters`. The router has no Linear layer for LoRA: train it fully or freeze it.
    """

    family = "glm4v_moe"
    router_loss = True
    router_scores = "sigmoid"
    module_patterns: ClassVar = {
        **Glm4vAdapter.module_patterns,
        "router": ("model.language_model.layers.*.mlp.gate",),
        "experts": ("model.language_model.layers.*.mlp.experts",),
    }
    lora_modules: ClassVar = {
        **Glm4vAdapter.lora_modules,
        # GLM-4.5-Air's dense MLP and shared experts keep gate and up apart
        "language": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    }
    lora_parameters: ClassVar = {"experts": ("gate_up_proj", "down_proj")}

    def route_weights(self, router: nn.Module, logits: Tensor, indices: Tensor) -> Tensor:
        """Routing replay's combine weights [N, k] (`vlrl.models.routing`), Glm4vMoeTextTopkRouter's:
        sigmoid scores of the float32 logits at the replayed experts (the correction bias only
        selects, so it has no part here), renormalised (+1e-20, as transformers) when
        `norm_topk_prob`, times `routed_scaling_factor`."""
        weights = logits.float().sigmoid().gather(1, indices)
        if router.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * router.routed_scaling_factor
