"""Tiny Qwen3.5 and Qwen3.5-MoE checkpoints: the real hybrid architecture at micro widths.

Qwen3.5 (transformers' `qwen3_5` / `qwen3_5_moe`) interleaves Gated-DeltaNet linear-attention
layers with gated full-attention layers, three to one in the released models
(`full_attention_interval` 4). A tiny model keeps the pattern's two kinds at every size: at
least one linear and one full-attention layer (micro: [linear, full]), so everything that
depends on the hybrid cache (conv + recurrent states beside a KV cache) is exercised. The MoE
variant has 4 routed experts of 3/4 the hidden width, top-2, plus the always-on shared expert of
the real model.

Widths follow the released configs scaled down: attention head dim 32 (the factory's rule),
linear-attention key/value head dim 32 with twice as many value heads as key heads (16 / 32 in
Qwen3.5-9B and -35B-A3B), rotary on a quarter of the head dim (`partial_rotary_factor` 0.25)
split over (t, h, w) as [2, 1, 1] (the real [11, 11, 10] over 64 dims), interleaved M-RoPE.
The vision tower is Qwen3-VL's without deepstack, 16-pixel patches, 2x2 merge.

This module takes everything family-independent (tokenizer, sizes) from its caller, so the
factory's `FAMILIES` table can list it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import PretrainedConfig, ProcessorMixin, Qwen3_5Config, Qwen3_5MoeConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlrl.models.processors import Qwen3VLImageOnlyProcessor
from vlrl.models.tiny.qwen3_vl import token_ids

PATCH = 16  # Qwen3.5's ViT patch (Qwen2-VL's was 14); one merged token covers 32x32 pixels
HEAD_DIM = 32
# A 112x112 synthetic image resizes to 128x128 (multiples of 32): 8x8 patches, 16 tokens.
MIN_PIXELS = 64 * 64
MAX_PIXELS = 4 * 128 * 128


def layer_types(layers: int) -> list[str]:
    """Qwen3.5's 3:1 pattern (every 4th layer full attention), with the last layer always full
    attention so that even 2 layers hold both kinds: 2 -> [linear, full], 4 -> [linear x3, full]."""
    kinds = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)]
    kinds[-1] = "full_attention"
    return kinds


def _text(size, vocab: int, tok) -> dict:
    heads = size.hidden // HEAD_DIM
    return dict(
        vocab_size=vocab,
        hidden_size=size.hidden,
        intermediate_size=size.hidden * 2,
        num_hidden_layers=size.layers,
        layer_types=layer_types(size.layers),
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=HEAD_DIM,
        linear_num_key_heads=heads,
        linear_num_value_heads=2 * heads,
        linear_key_head_dim=HEAD_DIM,
        linear_value_head_dim=HEAD_DIM,
        linear_conv_kernel_dim=4,
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )


def _vision(size) -> dict:
    return dict(
        depth=size.vision_depth,
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_hidden * 2,
        num_heads=size.vision_hidden // HEAD_DIM,
        out_hidden_size=size.hidden,
        patch_size=PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
        # A learned 8x8 grid of position embeddings, interpolated to each image's patch grid
        # (the real model has 48x48 = 2304).
        num_position_embeddings=64,
    )


def qwen3_5_config(size, vocab: int, tok) -> PretrainedConfig:
    """Dense Qwen3.5: hybrid layers, a SwiGLU MLP in every layer."""
    return Qwen3_5Config(text_config=_text(size, vocab, tok), vision_config=_vision(size), **token_ids(tok))


def qwen3_5_moe_config(size, vocab: int, tok) -> PretrainedConfig:
    """Qwen3.5-MoE: every layer's MLP is 4 routed experts (top-2) plus a gated shared expert, each
    3/4 of the hidden width (the real model: 256 experts of 512 on a 2048 hidden, top-8, shared
    512). Not square, so that an expert weight read in the wrong orientation fails on its shape:
    the Hub files hold each expert's [I, H] projections, transformers fuses them into
    [E, 2I, H] / [E, H, I] at load and splits them back at save."""
    text = _text(size, vocab, tok)
    del text["intermediate_size"]  # no dense MLP in any layer
    text.update(
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=3 * size.hidden // 4,
        shared_expert_intermediate_size=3 * size.hidden // 4,
        # transformers' load-balancing loss is off during RL (vlrl's model.router_aux_loss_coef);
        # the tiny checkpoint ships the value the RL configs use.
        router_aux_loss_coef=0.0,
    )
    return Qwen3_5MoeConfig(text_config=text, vision_config=_vision(size), **token_ids(tok))


def qwen3_5_processor(chat_template: str) -> Callable[[object], ProcessorMixin]:
    """Builder of Qwen3.5's image-only processor (Qwen3-VL's) with `chat_template` (the factory's
    ChatML, as Qwen3.5 writes images: the placeholder between vision markers)."""

    def build(tok) -> ProcessorMixin:
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=PATCH,
            merge_size=2,
            temporal_patch_size=2,
            size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        )
        return Qwen3VLImageOnlyProcessor(
            image_processor=image_processor, tokenizer=tok, chat_template=chat_template
        )

    return build
