"""Image-only processors, so that VLMs load and run on machines without torchvision.

transformers' Qwen2-VL and InternVL processors insist on a video processor, and every video
processor imports torchvision, which has no CPU wheel on many machines (and a broken torchvision
also breaks `transformers.image_utils`). vlrl never feeds video, so each family gets a subclass
whose only sub-processors are the image processor (PIL or torchvision backend, picked by
`AutoImageProcessor`) and the tokenizer.

`register()` makes `AutoProcessor` resolve these class names: transformers looks a saved
`processor_class` up among registered processors, and an unregistered custom name would make
`AutoProcessor` silently fall back to returning a bare tokenizer. `import vlrl` calls it.
"""

from __future__ import annotations

from transformers import (
    AriaConfig,
    AriaProcessor,
    AutoProcessor,
    Glm4vConfig,
    Glm4vMoeConfig,
    Glm4vProcessor,
    Idefics3Config,
    Idefics3Processor,
    InternVLConfig,
    InternVLProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLProcessor,
    Qwen3_5Config,
    Qwen3_5MoeConfig,
    Qwen3VLConfig,
    Qwen3VLMoeConfig,
    Qwen3VLProcessor,
)
from transformers.utils import is_torchvision_available

from vlrl.models.deepseek_vl2.configuration import DeepseekVLV2Config
from vlrl.models.deepseek_vl2.processing import DeepseekVLV2Processor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without the video sub-processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the video sub-processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """Qwen3-VL (dense and MoE) processor without the video sub-processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Glm4vImageOnlyProcessor(Glm4vProcessor):
    """GLM-4.1V / GLM-4.5V processor without the video sub-processor (GLM-4.5V uses GLM-4.1V's)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class InternVLImageOnlyProcessor(InternVLProcessor):
    """InternVL processor without the video sub-processor.

    `image_seq_length` stays an explicit argument: `ProcessorMixin` saves and restores only the
    arguments named in `__init__`, and InternVL's token count per tile depends on it.
    """

    def __init__(
        self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs
    ):
        super().__init__(
            image_processor,
            tokenizer,
            None,
            image_seq_length=image_seq_length,
            chat_template=chat_template,
            **kwargs,
        )


IMAGE_ONLY_PROCESSORS = {
    Qwen2VLConfig: Qwen2VLImageOnlyProcessor,
    Qwen2_5_VLConfig: Qwen2_5_VLImageOnlyProcessor,
    Qwen3VLConfig: Qwen3VLImageOnlyProcessor,
    Qwen3VLMoeConfig: Qwen3VLImageOnlyProcessor,
    # Qwen3.5 (dense and MoE) uses Qwen3-VL's processor (transformers' processing_auto)
    Qwen3_5Config: Qwen3VLImageOnlyProcessor,
    Qwen3_5MoeConfig: Qwen3VLImageOnlyProcessor,
    Glm4vConfig: Glm4vImageOnlyProcessor,
    Glm4vMoeConfig: Glm4vImageOnlyProcessor,
    InternVLConfig: InternVLImageOnlyProcessor,
    Idefics3Config: Idefics3Processor,  # image-only already
    AriaConfig: AriaProcessor,  # image-only already (a PIL image processor, no video)
    DeepseekVLV2Config: DeepseekVLV2Processor,  # ours: DeepSeek-VL2 is not in transformers
}


def register() -> None:
    """Make `AutoProcessor` know the image-only classes by name (idempotent)."""
    for config_class, processor_class in IMAGE_ONLY_PROCESSORS.items():
        # exist_ok: the config classes already map to transformers' own processors; the
        # registration is only needed so that the image-only *names* resolve.
        AutoProcessor.register(config_class, processor_class, exist_ok=True)


def torchvision_usable() -> bool:
    """True when torchvision imports and works (transformers checks the import and version)."""
    return is_torchvision_available()
