"""Qwen3.5 (dense: 0.8B-27B) and Qwen3.5-MoE (35B-A3B, 122B-A10B, 397B-A17B; Qwen3.6 shares the
architecture and model type) on transformers' own classes.

Natively multimodal: Qwen3-VL's vision tower without deepstack (16 px patches, 2x2 merge, one
`<|image_pad|>` per merged group) feeds a language model whose layers are hybrid, three
Gated-DeltaNet linear-attention layers (`linear_attn`: `in_proj_qkv`, `in_proj_z`, `in_proj_b`,
`in_proj_a`, a causal depthwise conv, the gated delta rule of arXiv 2412.06464, `out_proj`) to
one gated full-attention layer (`self_attn`), repeated (Qwen3.5 model cards, "Hidden Layout:
N x (3 x (Gated DeltaNet -> FFN/MoE) -> 1 x (Gated Attention -> FFN/MoE))"). Inputs and M-RoPE
positions are Qwen3-VL's (same processor, `mm_token_type_ids`, interleaved M-RoPE over
t/h/w), so `position_ids` and the processor settings are inherited; the vision cache holds the
merged features only (no deepstack).

Linear-attention layers keep a conv state (the last kernel-size inputs) and a recurrent state
[B, heads, d_k, d_v] in the cache instead of keys and values; `vlrl.models.prefix` re-indexes
them per row like the KV cache, so the shared-prefix path is exact (tested against padded full
passes). Padding: transformers zeroes padded positions before the projections
(`apply_mask_to_padding_states`), so left padding leaves a zero state that the real tokens start
from, exactly as without padding; right padding comes after every real token and never reaches it.

Boxes: as Qwen3-VL, coordinates normalised to 0-1000 of the image (QwenLM/Qwen3-VL README and its
cookbooks/2d_grounding.ipynb, "relative position coordinates"; Qwen3.5 keeps Qwen3-VL's grounding
format).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from vlrl.models.adapters.qwen3_vl import Qwen3VLAdapter, softmax_top_weights
from vlrl.models.adapters.qwen_vl import _LANGUAGE_LINEARS

# Gated DeltaNet's linear maps: fused q/k/v, the output gate z, the per-head update rate b
# (beta = sigmoid(b)) and decay input a, and the output projection.
LINEAR_ATTENTION = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")

_VISION = ("model.visual",)
_CONNECTOR = ("model.visual.merger",)
_LANGUAGE = ("model.language_model", "lm_head")


class Qwen3_5Adapter(Qwen3VLAdapter):
    family = "qwen3_5"
    module_patterns: ClassVar = {"vision": _VISION, "connector": _CONNECTOR, "language": _LANGUAGE}
    lora_modules: ClassVar = {
        "vision": ("qkv", "proj", "linear_fc1", "linear_fc2"),
        "connector": ("linear_fc1", "linear_fc2"),
        "language": _LANGUAGE_LINEARS + LINEAR_ATTENTION,
    }
    # Qwen3.5's vision tower has no deepstack mergers: the merged features are all it returns.
    vision_output_fields = ("pooler_output",)


class Qwen3_5MoeAdapter(Qwen3_5Adapter):
    """Qwen3.5-MoE: every decoder layer's MLP is a sparse block `mlp` of a router `mlp.gate`,
    fused routed experts `mlp.experts` (`gate_up_proj` [E, 2I, H], `down_proj` [E, H, I]) and an
    always-on shared expert `mlp.shared_expert` (a SwiGLU MLP) scaled by
    sigmoid(`mlp.shared_expert_gate`(h)); no dense layers.

    Router (transformers' `Qwen3_5MoeTopKRouter`, Qwen3-VL-MoE's, as in Qwen3, arXiv 2505.09388):
    logits = W h, softmax over all E experts in float32, top-k of the probabilities, the k weights
    renormalised to sum to 1; the block's output is the weighted sum of the k experts plus the gated
    shared expert. The router is its own group (freezable, its own learning rate) and has no LoRA
    target (one [E, H] matrix: train it in full or freeze it). The shared expert and its gate are
    dense parameters every token uses: they stay in `language`, whose LoRA targets include the
    shared expert's projections. The routed experts' LoRA targets are the fused weights, through
    peft's `target_parameters` (peft requires lora_dropout 0 for them).

    Layouts: the Hub files hold each expert's projections apart (`mlp.experts.{e}.gate_proj.weight`
    [I, H], `up_proj`, `down_proj` [H, I]); transformers 5.25 fuses them at load (its
    conversion_mapping for qwen3_5_moe_text: Qwen2-MoE's merge) and `save_pretrained` splits them
    back, so checkpoints keep the Hub layout.
    """

    family = "qwen3_5_moe"
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
        renormalise (Qwen3_5MoeTopKRouter always renormalises; the shared expert is not routed)."""
        return softmax_top_weights(logits, indices)
