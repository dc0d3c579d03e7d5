"""Aria (rhymes-ai/Aria, transformers' layout): SigLIP on padded squares, a query projector, an MoE decoder.

An image is resized so that its longer side is the processor's `max_image_size` (490 or 980, the
two resolutions Aria was trained at; the shorter side is at least `min_image_size`), padded to a
square, and sent as `pixel_values` [images, 3, S, S] with `pixel_mask` [images, S, S] marking the
real pixels (the vision tower attends only to patches that hold some). The projector's learned
queries cross-attend to the patches, so every image becomes a fixed number of `<|img|>` tokens
(128 at 490, 256 at 980), written `<fim_prefix><|img|><fim_suffix>` by Aria's chat template.

The decoder is a Mixture-of-Experts with 1-D RoPE. Each layer's router (`mlp.router`, a bare
[E, H] weight) scores the E routed experts; Aria takes the top-k *logits* and softmaxes over those
k only (transformers' `AriaTextTopKRouter`; rhymes-ai/Aria `aria/model/moe_lm.py`), which equals a
full softmax renormalised over the chosen k. The routed experts (`mlp.experts`) hold fused 3-D
weights (`gate_up_proj` [E, H, 2I], `down_proj` [E, I, H]: Aria stores them input-major); the
shared experts (`mlp.shared_experts`, plain Linear layers) see every token and stay in `language`.
rhymes-ai/Aria: 64 routed experts, top 6, 2 shared, 28 layers.

Boxes: Aria has no grounding format of its own: the base model scores 2.27 precision@1 on
RefCOCO (rhymes-ai/Aria `examples/refcoco/README.md`). Its official RefCOCO fine-tuning example
teaches `(x1,y1),(x2,y2)` normalised to 0-999 of the original image (`examples/refcoco/
evaluation.py` divides by 999); vlrl writes boxes normalised to 0-1000, which is that frame up to
0.1%, and a normalised box survives Aria's resize-and-pad unchanged.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from vlrl.models.adapters.base import ModelAdapter, plain_positions

_LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class AriaAdapter(ModelAdapter):
    family = "aria"
    box_convention = "norm1000"
    module_patterns: ClassVar = {
        "vision": ("model.vision_tower",),
        "connector": ("model.multi_modal_projector",),
        "language": ("model.language_model", "lm_head"),
        "router": ("model.language_model.layers.*.mlp.router",),
        "experts": ("model.language_model.layers.*.mlp.experts",),
    }
    placeholder_tokens = ("<|img|>", "<fim_prefix>", "<fim_suffix>")
    lora_modules: ClassVar = {
        "vision": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
        # The projector's nn.MultiheadAttention reads its `out_proj` weight directly (never calls the
        # module), so a LoRA there would be silently skipped: only the layers it calls are targets.
        "connector": ("q_proj", "k_proj", "v_proj", "linear", "linear_in", "linear_out"),
        # The shared experts' gate/up/down projections are Linear layers of the language group.
        "language": _LANGUAGE_LINEARS,
    }
    lora_parameters: ClassVar = {"experts": ("gate_up_proj", "down_proj")}
    vision_keys = ("pixel_values", "pixel_mask")
    fixed_resolution = (
        "it resizes every image to its max_image_size (490 or 980, in the checkpoint's preprocessor config)"
    )

    def image_kwargs(self) -> dict:
        # AriaProcessor's own defaults (max_image_size 980) override the image processor's saved
        # value, so the checkpoint's resolution is passed explicitly; vLLM gets the same kwargs.
        return {"max_image_size": self.processor.image_processor.max_image_size}

    def model_image_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) after Aria's resize (before the padding to a square), as its image
        processor computes it: the longer side becomes max_image_size, the shorter one scales
        along but not below min_image_size."""
        ip = self.processor.image_processor
        w, h = size
        scale = ip.max_image_size / max(w, h)
        if w >= h:
            return (ip.max_image_size, max(int(h * scale), ip.min_image_size))
        return (max(int(w * scale), ip.min_image_size), ip.max_image_size)

    def position_ids(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return plain_positions(batch)

    def route_weights(self, router: nn.Module, logits: Tensor, indices: Tensor) -> Tensor:
        """Routing replay's combine weights [N, k] (`vlrl.models.routing`), AriaTextTopKRouter's:
        a softmax over the logits of the replayed experts only."""
        return torch.softmax(logits.gather(1, indices), dim=-1)
