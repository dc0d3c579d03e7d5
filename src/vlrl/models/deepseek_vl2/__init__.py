"""DeepSeek-VL2 (deepseek-ai/deepseek-vl2-tiny, -small, -base), built from transformers' parts.

transformers has no DeepSeek-VL2; `register()` (called by `import vlrl`) makes its Auto classes
load the original checkpoints: `AutoConfig` for "deepseek_vl_v2", `AutoModelForImageTextToText`
(how vlrl loads every model) and the checkpoint conversion of `conversion.py`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForImageTextToText

from vlrl.models.deepseek_vl2.configuration import DeepseekVLV2Config
from vlrl.models.deepseek_vl2.conversion import register_conversion
from vlrl.models.deepseek_vl2.modeling import DeepseekVLV2ForCausalLM

__all__ = ["DeepseekVLV2Config", "DeepseekVLV2ForCausalLM", "register"]


def register() -> None:
    """Register DeepSeek-VL2 with transformers' Auto classes and conversion mappings (idempotent)."""
    AutoConfig.register(DeepseekVLV2Config.model_type, DeepseekVLV2Config, exist_ok=True)
    AutoModelForImageTextToText.register(DeepseekVLV2Config, DeepseekVLV2ForCausalLM, exist_ok=True)
    register_conversion()
