"""Tiny Qwen3-VL (dense) and Qwen3-VL-MoE checkpoints, for `vlrl.models.tiny.factory.FAMILIES`.

The architecture of Qwen3-VL-8B / 30B-A3B (transformers' `Qwen3VLConfig` / `Qwen3VLMoeConfig`) at
micro widths: 16 px patches with a 2x2 merge (32 px per image token), a learned position grid
resampled to each image, interleaved M-RoPE, and DeepStack, which adds the features of some
vision layers (`deepstack_visual_indexes`) to the hidden states of the first language layers at
the image tokens. The MoE variant replaces every MLP by routed experts (softmax -> top-k ->
renormalise, no shared expert), with fused 3-D expert weights as in transformers 5.x.

`size` is the factory's `Size` (hidden, layers, vision_hidden, vision_depth); this module does
not import the factory, which imports it.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import PretrainedConfig, ProcessorMixin, Qwen3VLConfig, Qwen3VLMoeConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlrl.models.processors import Qwen3VLImageOnlyProcessor

PATCH = 16
MERGE = 2
HEAD_DIM = 32  # vLLM's minimum, as for the other tiny families
# Qwen3-VL-8B splits its 64 rotary frequencies 24:20:20 over (t, h, w), interleaved (t h w t h w ...
# with t taking the remainder); 6:5:5 is the same split of head_dim 32's 16 frequencies.
MROPE_SECTION = [6, 5, 5]
# Pixel bounds: a 112x112 synthetic image becomes 128x128 (smart_resize rounds each side to a
# multiple of 32): 8x8 patches, 16 image tokens, as many as the other families give it. Larger
# images are scaled down to at most 64 tokens' worth of pixels (4 x 128^2).
MIN_PIXELS = 64 * 64
MAX_PIXELS = 4 * 128 * 128
# MoE shape: Qwen3-VL-30B-A3B routes each token to 8 of 128 experts; 2 of 4 keeps every expert
# busy on a tiny batch, so that each one gets gradient in tests.
EXPERTS, TOP_K = 4, 2


def _text(size, vocab: int, tok) -> dict:
    heads = size.hidden // HEAD_DIM
    return dict(
        vocab_size=vocab,
        hidden_size=size.hidden,
        intermediate_size=size.hidden * 2,
        # DeepStack adds vision features after language layers 0 and 1: a third layer must follow
        # for them to reach any text token (after the last layer they would touch only the image
        # tokens' own logits, and the second deepstack merger would get no gradient).
        num_hidden_layers=max(3, size.layers),
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=HEAD_DIM,
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": MROPE_SECTION,
            "mrope_interleaved": True,
        },
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )


def _vision(size) -> dict:
    return dict(
        depth=max(2, size.vision_depth),  # DeepStack taps two layers, so at least two exist
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_hidden * 2,
        num_heads=size.vision_hidden // HEAD_DIM,
        out_hidden_size=size.hidden,
        patch_size=PATCH,
        spatial_merge_size=MERGE,
        temporal_patch_size=2,
        # A 6x6 learned grid, bilinearly resampled to each image's patch grid (48x48 in the real model).
        num_position_embeddings=36,
        # Qwen3-VL-8B taps vision layers 8, 16, 24 of 27 into language layers 0, 1, 2; here the
        # first two vision layers feed language layers 0 and 1.
        deepstack_visual_indexes=[0, 1],
    )


def token_ids(tok) -> dict:
    """The vision token ids and untied head of Qwen3-VL's and Qwen3.5's configs."""
    return dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def qwen3_vl_config(size, vocab: int, tok) -> PretrainedConfig:
    """Dense Qwen3-VL at `size`."""
    return Qwen3VLConfig(text_config=_text(size, vocab, tok), vision_config=_vision(size), **token_ids(tok))


def qwen3_vl_moe_config(size, vocab: int, tok) -> PretrainedConfig:
    """Qwen3-VL-MoE at `size`: every layer's MLP is EXPERTS routed experts, TOP_K per token."""
    text = _text(size, vocab, tok) | dict(
        num_experts=EXPERTS,
        num_experts_per_tok=TOP_K,
        # Neither I nor 2I equals the hidden size, so that the fused [E, 2I, H] and [E, H, I] weights
        # are not square: a checkpoint's transposed expert layout ([E, H, 2I], see transformers'
        # conversion_mapping) cannot pass for the in-memory one unnoticed.
        moe_intermediate_size=3 * size.hidden // 4,
        decoder_sparse_step=1,
        # Kept off in RL (see ModelSection.router_aux_loss_coef); the trainer sets what it needs.
        router_aux_loss_coef=0.0,
    )
    return Qwen3VLMoeConfig(text_config=text, vision_config=_vision(size), **token_ids(tok))


def qwen3_vl_processor(chat_template: str) -> Callable[[object], ProcessorMixin]:
    """Builder of the image-only Qwen3-VL processor with `chat_template` (the factory's ChatML)."""

    def build(tok) -> ProcessorMixin:
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=PATCH,
            merge_size=MERGE,
            temporal_patch_size=2,
            # Qwen3-VL normalises pixels to [-1, 1] (mean = std = 0.5), unlike Qwen2-VL's CLIP values.
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        )
        return Qwen3VLImageOnlyProcessor(
            image_processor=image_processor, tokenizer=tok, chat_template=chat_template
        )

    return build
