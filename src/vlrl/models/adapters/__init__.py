"""Model adapters, one per family, looked up by the checkpoint's `config.model_type`."""

from __future__ import annotations

from vlrl.models.adapters.base import ImageError, ModelAdapter, VisionCache, image_size, load_image
from vlrl.models.adapters.idefics3 import Idefics3Adapter
from vlrl.models.adapters.internvl import InternVLAdapter
from vlrl.models.adapters.qwen3_vl import Qwen3VLAdapter, Qwen3VLMoeAdapter
from vlrl.models.adapters.qwen_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter

ADAPTERS: dict[str, type[ModelAdapter]] = {
    "qwen2_vl": Qwen2VLAdapter,
    "qwen2_5_vl": Qwen2_5_VLAdapter,
    "internvl": InternVLAdapter,
    "idefics3": Idefics3Adapter,
    "qwen3_vl": Qwen3VLAdapter,
    "qwen3_vl_moe": Qwen3VLMoeAdapter,
}


def adapter_class(model_type: str) -> type[ModelAdapter]:
    """The adapter for a `config.model_type`; unsupported types list the supported ones."""
    if model_type not in ADAPTERS:
        raise ValueError(
            f"model type '{model_type}' is not supported; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]


__all__ = [
    "ADAPTERS",
    "ImageError",
    "ModelAdapter",
    "VisionCache",
    "adapter_class",
    "image_size",
    "load_image",
]
