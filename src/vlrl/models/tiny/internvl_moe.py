"""Tiny InternVL3.5-MoE checkpoints (InternVL3_5-30B-A3B-HF layout), for `vlrl.models.tiny.factory.FAMILIES`.

InternVL3.5-30B-A3B is transformers' InternVL (`model_type` internvl: InternViT, pixel shuffle,
MLP projector) around Qwen3-30B-A3B, a `qwen3_moe` decoder: every layer routes each token to the
top 8 of 128 experts (softmax over all experts -> top-k -> renormalise, `norm_topk_prob`), with
fused 3-D expert weights and q/k RMSNorm in attention. The tiny one is the factory's tiny InternVL
(same vision tower, tiles, processor and tokens) with its Qwen2 language model replaced by a
Qwen3-MoE of the same widths.

The factory passes its dense InternVL builder in (`with_moe_language(internvl_config)`), so this
module does not import the factory, which imports it.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import InternVLConfig, PretrainedConfig

HEAD_DIM = 32  # vLLM's minimum, as for the other tiny families
# MoE shape: 2 of 4 experts keeps every expert busy on a tiny batch, so that each one gets
# gradient in tests (the real model: 8 of 128).
EXPERTS, TOP_K = 4, 2


def with_moe_language(dense: Callable[..., PretrainedConfig]) -> Callable[..., PretrainedConfig]:
    """The tiny InternVL config builder `dense` (size, vocab, tokenizer) -> InternVLConfig, with
    a Qwen3-MoE language model of the same widths in place of its Qwen2 one."""

    def build(size, vocab: int, tok) -> PretrainedConfig:
        config = dense(size, vocab, tok)
        old = config.text_config
        text = dict(
            model_type="qwen3_moe",
            vocab_size=old.vocab_size,
            hidden_size=old.hidden_size,
            # the width of each expert (768 at hidden 2048 in Qwen3-30B-A3B), 3H/4 here so that no
            # fused expert weight is square (a transposed layout cannot pass for the right one)
            moe_intermediate_size=3 * old.hidden_size // 4,
            intermediate_size=old.hidden_size * 2,
            mlp_only_layers=[],
            decoder_sparse_step=1,
            num_experts=EXPERTS,
            num_experts_per_tok=TOP_K,
            norm_topk_prob=True,
            num_hidden_layers=old.num_hidden_layers,
            num_attention_heads=old.num_attention_heads,
            num_key_value_heads=old.num_key_value_heads,
            head_dim=HEAD_DIM,
            max_position_embeddings=old.max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            bos_token_id=None,
            eos_token_id=old.eos_token_id,
            pad_token_id=old.pad_token_id,
            tie_word_embeddings=False,
        )
        return InternVLConfig(
            text_config=text,
            vision_config=config.vision_config,
            image_token_id=config.image_token_id,
            image_seq_length=config.image_seq_length,
            downsample_ratio=config.downsample_ratio,
            tie_word_embeddings=False,
        )

    return build
