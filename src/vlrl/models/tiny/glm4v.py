"""Tiny GLM-4.1V (`glm4v`, dense) and GLM-4.5V (`glm4v_moe`, Mixture-of-Experts) checkpoints.

The real architectures at small widths (transformers' `Glm4vConfig` / `Glm4vMoeConfig`):
- vision: 14 px patches in temporal pairs (`temporal_patch_size` 2: a still image is its own
  pair), 2x2 merged by a strided convolution (`downsample`) and a SwiGLU projector (`merger`):
  a 112x112 image is 8x8 patches and 16 `<|image|>` tokens, as for Qwen2-VL;
- language: GLM-4's decoder with 3-D rotary positions on half of each head
  (`partial_rotary_factor` 0.5, as in both real checkpoints: a 32-wide head rotates 16 dims, 8
  frequencies split 2:3:3 over time, height and width, the real [8, 12, 12] scaled down);
- MoE (GLM-4.5V's GLM-4.5-Air decoder): 6 routed experts in 3 groups, top-2 from the best 2
  groups (so that grouped top-k really excludes a group; the real model has one group of 128),
  one shared expert, and the first layer dense (`first_k_dense_replace` 1, as in GLM-4.5V).

The chat template is ChatML with GLM's image markers (`<|begin_of_image|><|image|><|end_of_image|>`),
as the other tiny families use ChatML: the adapter never depends on the template, which the real
checkpoints bring with them. This module does not import the factory (which imports it), so the
size argument is the factory's `Size`, taken by its attributes.
"""

from __future__ import annotations

from transformers import Glm4vConfig, Glm4vMoeConfig, PretrainedConfig, ProcessorMixin
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

from vlrl.models.processors import Glm4vImageOnlyProcessor

IMAGE_SIZE = 112  # the synthetic images: 8x8 patches of 14 px, 16 tokens after the 2x2 merge
PATCH = 14
TEMPORAL_PATCH = 2

GLM_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|video|>",
    # GLM-4.xV marks each box it grounds between these (see vlrl.models.adapters.glm4v)
    "<|begin_of_box|>",
    "<|end_of_box|>",
]

GLM_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _token_ids(tok) -> dict:
    ids = tok.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"),
        image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"),
        video_end_token_id=ids("<|end_of_video|>"),
    )


def _text(size, vocab: int, tok) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=size.hidden,
        intermediate_size=size.hidden * 2,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=max(1, size.heads // 2),
        max_position_embeddings=4096,
        # head dim 32 x 0.5 rotated = 16 dims = 8 frequencies, split 2:3:3 as GLM's [8, 12, 12] of 32
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": [2, 3, 3],
        },
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )


def _vision(size) -> dict:
    return dict(
        depth=size.vision_depth,
        hidden_size=size.vision_hidden,
        num_heads=size.vision_hidden // 32,
        # the projector's (`merger`) SwiGLU width; the vision blocks' MLPs are `out_hidden_size` wide
        intermediate_size=size.hidden * 2,
        out_hidden_size=size.hidden,
        # learned position embeddings on a 8x8 grid, bicubically resampled to each image's grid
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        temporal_patch_size=TEMPORAL_PATCH,
        spatial_merge_size=2,
    )


def glm4v_config(size, vocab: int, tok) -> PretrainedConfig:
    """GLM-4.1V-9B-Thinking's architecture at `size` (a factory `Size`)."""
    return Glm4vConfig(text_config=_text(size, vocab, tok), vision_config=_vision(size), **_token_ids(tok))


def glm4v_moe_config(size, vocab: int, tok) -> PretrainedConfig:
    """GLM-4.5V's architecture at `size`: GLM-4.5-Air's MoE decoder with GLM-4.1V's vision tower."""
    text = _text(size, vocab, tok) | dict(
        n_routed_experts=6,
        num_experts_per_tok=2,
        n_group=3,
        topk_group=2,
        n_shared_experts=1,
        moe_intermediate_size=size.hidden // 2,
        first_k_dense_replace=1,
        norm_topk_prob=True,
        routed_scaling_factor=1.0,
        attention_bias=True,
    )
    return Glm4vMoeConfig(text_config=text, vision_config=_vision(size), **_token_ids(tok))


def glm4v_processor(tok) -> ProcessorMixin:
    # GLM's resize budget counts the temporal pair (t x h x w, t = 2), hence the factor 2: a
    # 112x112 image stays 112x112 (16 tokens), larger ones are scaled down to at most 4x that.
    image_processor = Glm4vImageProcessorPil(
        patch_size=PATCH,
        temporal_patch_size=TEMPORAL_PATCH,
        merge_size=2,
        size={
            "shortest_edge": TEMPORAL_PATCH * 56 * 56,
            "longest_edge": TEMPORAL_PATCH * 4 * IMAGE_SIZE * IMAGE_SIZE,
        },
    )
    return Glm4vImageOnlyProcessor(image_processor=image_processor, tokenizer=tok, chat_template=GLM_TEMPLATE)
