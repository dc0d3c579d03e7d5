"""Model adapters, one per family, looked up by the checkpoint's `config.model_type` (`adapter_for`)."""

from __future__ import annotations

from vlrl.models.adapters.aria import AriaAdapter
from vlrl.models.adapters.base import ImageError, ModelAdapter, VisionCache, image_size, load_image
from vlrl.models.adapters.deepseek_vl2 import (
    DeepseekVL2Adapter,
    DeepseekVL2BaseAdapter,
    DeepseekVL2MlaAdapter,
)
from vlrl.models.adapters.glm4v import Glm4vAdapter, Glm4vMoeAdapter
from vlrl.models.adapters.idefics3 import Idefics3Adapter
from vlrl.models.adapters.internvl import InternVLAdapter, InternVLMoeAdapter
from vlrl.models.adapters.qwen3_5 import Qwen3_5Adapter, Qwen3_5MoeAdapter
from vlrl.models.adapters.qwen3_vl import Qwen3VLAdapter, Qwen3VLMoeAdapter
from vlrl.models.adapters.qwen_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter

ADAPTERS: dict[str, type[ModelAdapter]] = {
    "qwen2_vl": Qwen2VLAdapter,
    "qwen2_5_vl": Qwen2_5_VLAdapter,
    "internvl": InternVLAdapter,
    "idefics3": Idefics3Adapter,
    "aria": AriaAdapter,
    # InternVL3.5-MoE: InternVL around a Qwen3-MoE language model (see `adapter_for`)
    "internvl/qwen3_moe": InternVLMoeAdapter,
    "glm4v": Glm4vAdapter,
    "glm4v_moe": Glm4vMoeAdapter,
    "qwen3_vl": Qwen3VLAdapter,
    "qwen3_vl_moe": Qwen3VLMoeAdapter,
    "qwen3_5": Qwen3_5Adapter,
    "qwen3_5_moe": Qwen3_5MoeAdapter,
    # DeepSeek-VL2: -tiny's standard attention, -small's and -base's MLA (DeepSeek-V2 / -V3 decoders)
    "deepseek_vl_v2": DeepseekVL2Adapter,
    "deepseek_vl_v2/deepseek_v2": DeepseekVL2MlaAdapter,
    "deepseek_vl_v2/deepseek_v3": DeepseekVL2BaseAdapter,
}


def adapter_class(model_type: str) -> type[ModelAdapter]:
    """The adapter for a `config.model_type`; unsupported types list the supported ones."""
    if model_type not in ADAPTERS:
        raise ValueError(
            f"model type '{model_type}' is not supported; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]


def adapter_for(config) -> type[ModelAdapter]:
    """The adapter for a checkpoint's config: `"model_type/text model_type"` where such a key is
    registered (a family whose module groups depend on the language model inside, as InternVL's
    on a Qwen3-MoE), else `model_type`. Unsupported types list the supported ones."""
    text = getattr(config, "text_config", None)
    specific = f"{config.model_type}/{text.model_type}" if text is not None else None
    return ADAPTERS[specific] if specific in ADAPTERS else adapter_class(config.model_type)


__all__ = [
    "ADAPTERS",
    "ImageError",
    "ModelAdapter",
    "VisionCache",
    "adapter_class",
    "adapter_for",
    "image_size",
    "load_image",
]
