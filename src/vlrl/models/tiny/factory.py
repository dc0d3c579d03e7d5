"""Build tiny, randomly initialised VLMs fully offline, saved in standard Hugging Face format.

Tests and the CPU demo use only these models: nothing is ever downloaded. Each family is one
`TinyFamily` entry in `FAMILIES` (its config, image processor, processor, special tokens and chat
template); adding a family is one more entry. Architectures are the real transformers classes at
small widths, so everything that runs on a tiny model runs on the real checkpoint too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForImageTextToText,
    GenerationConfig,
    Idefics3Config,
    Idefics3Processor,
    InternVLConfig,
    PretrainedConfig,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlrl.models.processors import (
    InternVLImageOnlyProcessor,
    Qwen2_5_VLImageOnlyProcessor,
    Qwen2VLImageOnlyProcessor,
)
from vlrl.models.tiny import aria, internvl_moe
from vlrl.models.tiny import deepseek_vl2 as tiny_deepseek_vl2
from vlrl.models.tiny import glm4v as tiny_glm4v
from vlrl.models.tiny import qwen3_5 as tiny_qwen3_5
from vlrl.models.tiny.qwen3_vl import qwen3_vl_config, qwen3_vl_moe_config, qwen3_vl_processor
from vlrl.models.tiny.tokenizer import EOS, train_bpe


@dataclass(frozen=True)
class Size:
    """Widths of a tiny model. Head dim stays 32 (vLLM's minimum) at every size."""

    hidden: int
    layers: int
    vision_hidden: int
    vision_depth: int

    @property
    def heads(self) -> int:
        return self.hidden // 32


SIZES = {
    "micro": Size(hidden=64, layers=2, vision_hidden=64, vision_depth=1),
    "tiny": Size(hidden=128, layers=3, vision_hidden=64, vision_depth=2),
    "small": Size(hidden=256, layers=4, vision_hidden=128, vision_depth=2),
}

IMAGE_SIZE = 112  # synthetic images; 16 tokens each after Qwen's 2x2 merge or InternVL's pixel shuffle
PATCH = 14

QWEN_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
INTERNVL_SPECIALS = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
IDEFICS3_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<end_of_utterance>",
]
INTERNVL_NAMED = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def _chatml_template(image_text: str) -> str:
    """ChatML as Qwen-VL and InternVL-hf use it; `image_text` is what one image becomes.

    Content is a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts.
    """
    return (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}"
        + image_text
        + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


QWEN_TEMPLATE = _chatml_template("<|vision_start|><|image_pad|><|vision_end|>")
INTERNVL_TEMPLATE = _chatml_template("<IMG_CONTEXT>\n")
IDEFICS3_TEMPLATE = _chatml_template("<image>")


def _mrope_section(head_dim: int) -> list[int]:
    """M-RoPE splits head_dim/2 rotary frequencies over (time, height, width) as 1:1.5:1.5."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _qwen_text(size: Size, vocab: int, tok) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=size.hidden,
        intermediate_size=size.hidden * 2,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=max(1, size.heads // 2),
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(32)},
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )


def _qwen_ids(tok) -> dict:
    return dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )


def qwen2_vl_config(size: Size, vocab: int, tok) -> PretrainedConfig:
    vision = dict(
        depth=size.vision_depth,
        embed_dim=size.vision_hidden,
        hidden_size=size.hidden,
        num_heads=size.vision_hidden // 32,
        mlp_ratio=2,
        patch_size=PATCH,
        spatial_merge_size=2,
    )
    return Qwen2VLConfig(text_config=_qwen_text(size, vocab, tok), vision_config=vision, **_qwen_ids(tok))


def qwen2_5_vl_config(size: Size, vocab: int, tok) -> PretrainedConfig:
    vision = dict(
        depth=size.vision_depth,
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_hidden * 2,
        out_hidden_size=size.hidden,
        num_heads=size.vision_hidden // 32,
        patch_size=PATCH,
        spatial_merge_size=2,
        window_size=IMAGE_SIZE,
        fullatt_block_indexes=[size.vision_depth - 1],
    )
    return Qwen2_5_VLConfig(text_config=_qwen_text(size, vocab, tok), vision_config=vision, **_qwen_ids(tok))


def internvl_config(size: Size, vocab: int, tok) -> PretrainedConfig:
    text = _qwen_text(size, vocab, tok)
    text.pop("rope_parameters")  # InternVL's language model is plain Qwen2: 1-D RoPE, no M-RoPE
    text["model_type"] = "qwen2"
    vision = dict(
        hidden_size=size.vision_hidden,
        num_hidden_layers=size.vision_depth,
        num_attention_heads=size.vision_hidden // 32,
        intermediate_size=size.vision_hidden * 2,
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
        patch_size=[PATCH, PATCH],
    )
    return InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=internvl_tokens_per_tile(),
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )


def idefics3_config(size: Size, vocab: int, tok) -> PretrainedConfig:
    text = _qwen_text(size, vocab, tok)
    text.pop("rope_parameters")  # a plain Llama decoder: 1-D RoPE
    text["model_type"] = "llama"
    vision = dict(
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_hidden * 2,
        num_hidden_layers=size.vision_depth,
        num_attention_heads=size.vision_hidden // 32,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    return Idefics3Config(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )


def idefics3_processor(tok) -> ProcessorMixin:
    # One image = one global tile of the vision tower's size; splitting large images into a grid
    # of tiles is Idefics3's option for documents, off here so that every image costs 16 tokens.
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=(IMAGE_SIZE // PATCH) ** 2 // 4,
        chat_template=IDEFICS3_TEMPLATE,
    )


def internvl_tokens_per_tile() -> int:
    """Patches per tile, reduced 4x by InternVL's pixel shuffle (downsample ratio 0.5)."""
    return (IMAGE_SIZE // PATCH) ** 2 // 4


def qwen_processor(processor_class: type[ProcessorMixin]) -> Callable:
    def build(tok) -> ProcessorMixin:
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=PATCH,
            merge_size=2,
            temporal_patch_size=2,
            # Bounds chosen so a 112x112 synthetic image stays 112x112 (16 tokens) while larger
            # user images are scaled down to at most 4x that.
            size={"shortest_edge": 56 * 56, "longest_edge": 4 * IMAGE_SIZE * IMAGE_SIZE},
        )
        return processor_class(image_processor=image_processor, tokenizer=tok, chat_template=QWEN_TEMPLATE)

    return build


def internvl_processor(tok) -> ProcessorMixin:
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        crop_to_patches=True,  # InternVL's dynamic tiling: large images become several tiles + a thumbnail
        min_patches=1,
        max_patches=4,
    )
    return InternVLImageOnlyProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_length=internvl_tokens_per_tile(),
        chat_template=INTERNVL_TEMPLATE,
    )


@dataclass(frozen=True)
class TinyFamily:
    """Everything needed to build one family's tiny checkpoint."""

    special_tokens: list[str]
    config: Callable[[Size, int, object], PretrainedConfig]
    processor: Callable[[object], ProcessorMixin]
    named_tokens: dict[str, str] | None = None
    # the tokenizer's bos / eos / pad where they are not Qwen's (no bos, eos <|im_end|>, pad <|endoftext|>)
    roles: dict[str, str] | None = None
    # the tokens generation stops at (Qwen's generation configs stop at <|endoftext|> too)
    stop_tokens: tuple[str, ...] = ("<|im_end|>", EOS)


def _deepseek_vl2(config: Callable[[Size, int, object], PretrainedConfig]) -> TinyFamily:
    """A DeepSeek-VL2 variant: the released tokenizer's special tokens and roles, its processor."""
    return TinyFamily(
        tiny_deepseek_vl2.SPECIALS,
        config,
        tiny_deepseek_vl2.deepseek_vl2_processor,
        roles=tiny_deepseek_vl2.ROLES,
        stop_tokens=(tiny_deepseek_vl2.EOS,),
    )


FAMILIES: dict[str, TinyFamily] = {
    "qwen2_vl": TinyFamily(QWEN_SPECIALS, qwen2_vl_config, qwen_processor(Qwen2VLImageOnlyProcessor)),
    "qwen2_5_vl": TinyFamily(QWEN_SPECIALS, qwen2_5_vl_config, qwen_processor(Qwen2_5_VLImageOnlyProcessor)),
    "internvl": TinyFamily(INTERNVL_SPECIALS, internvl_config, internvl_processor, INTERNVL_NAMED),
    "idefics3": TinyFamily(IDEFICS3_SPECIALS, idefics3_config, idefics3_processor),
    "glm4v": TinyFamily(tiny_glm4v.GLM_SPECIALS, tiny_glm4v.glm4v_config, tiny_glm4v.glm4v_processor),
    "glm4v_moe": TinyFamily(tiny_glm4v.GLM_SPECIALS, tiny_glm4v.glm4v_moe_config, tiny_glm4v.glm4v_processor),
    "aria": TinyFamily(aria.SPECIALS, aria.aria_config, aria.aria_processor, aria.NAMED),
    "internvl_moe": TinyFamily(
        INTERNVL_SPECIALS, internvl_moe.with_moe_language(internvl_config), internvl_processor, INTERNVL_NAMED
    ),
    "qwen3_vl": TinyFamily(QWEN_SPECIALS, qwen3_vl_config, qwen3_vl_processor(QWEN_TEMPLATE)),
    "qwen3_vl_moe": TinyFamily(QWEN_SPECIALS, qwen3_vl_moe_config, qwen3_vl_processor(QWEN_TEMPLATE)),
    "qwen3_5": TinyFamily(
        QWEN_SPECIALS, tiny_qwen3_5.qwen3_5_config, tiny_qwen3_5.qwen3_5_processor(QWEN_TEMPLATE)
    ),
    "qwen3_5_moe": TinyFamily(
        QWEN_SPECIALS, tiny_qwen3_5.qwen3_5_moe_config, tiny_qwen3_5.qwen3_5_processor(QWEN_TEMPLATE)
    ),
    "deepseek_vl2": _deepseek_vl2(tiny_deepseek_vl2.deepseek_vl2_config),
    "deepseek_vl2_mla": _deepseek_vl2(tiny_deepseek_vl2.deepseek_vl2_mla_config),
}


def default_corpus() -> list[str]:
    """Text the tiny tokenizer learns its merges from: every synthetic task plus the templates."""
    from vlrl.data.prompts import TEMPLATES
    from vlrl.synth import task_texts

    texts = [t.system_prompt or "" for t in TEMPLATES.values()]
    texts += task_texts(n_per_task=100, seed=0)
    return texts


def build_tiny_model(
    family: str,
    out_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    vocab_size: int = 400,
    corpus: Iterable[str] | None = None,
) -> Path:
    """Build and save a tiny `family` model with tokenizer and processor in `out_dir`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family '{family}'; valid: {', '.join(sorted(FAMILIES))}")
    if size not in SIZES:
        raise ValueError(f"unknown tiny-model size '{size}'; valid: {', '.join(SIZES)}")
    spec = FAMILIES[family]
    roles = spec.roles or {}
    tok = train_bpe(
        default_corpus() if corpus is None else corpus,
        spec.special_tokens,
        vocab_size=vocab_size,
        extra_special_tokens=spec.named_tokens,
        eos_token=roles.get("eos_token", "<|im_end|>"),
    )
    if roles:
        tok.add_special_tokens(roles)
    # Round the embedding up to a multiple of 64 so matmuls stay aligned; spare rows are never produced
    # by the tokenizer.
    vocab = -(-len(tok) // 64) * 64
    config = spec.config(SIZES[size], vocab, tok)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.convert_tokens_to_ids(list(spec.stop_tokens)),
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    spec.processor(tok).save_pretrained(out)
    return out
