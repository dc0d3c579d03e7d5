"""DeepSeek-VL2 checkpoint names <-> the modules of `modeling.py`, as transformers' conversion mapping.

The published safetensors use the original modules' names (modeling_deepseek_vl_v2.py,
siglip_vit.py, modeling_deepseek.py): a timm ViT under `vision.` (`patch_embed.proj`,
`pos_embed` [1, N, D], `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`,
and the unused `attn_pool`), `projector.layers.*`, `image_newline`, `view_seperator` and the
language model under `language.model.*` / `language.lm_head.weight` with one MLP per routed
expert (`mlp.experts.{e}.{gate,up,down}_proj.weight`).

Loading renames the ViT into `SiglipVisionModel`'s names, splits the fused qkv into q/k/v, drops
the position table's leading batch dim and merges the experts into transformers' fused
`gate_up_proj` [E, 2I, H] / `down_proj` [E, H, I]; saving (transformers reverses the mapping)
writes the original names back. `attn_pool` is ignored at load (the model's
`_keys_to_ignore_on_load_unexpected`), so it is absent from what is saved.
"""

from __future__ import annotations

import torch
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import (
    Chunk,
    Concatenate,
    ConversionOps,
    MergeModulelist,
    WeightConverter,
    WeightRenaming,
)

__all__ = ["MODEL_TYPE", "checkpoint_mapping", "register_conversion"]

MODEL_TYPE = "deepseek_vl_v2"

_VIT = "vision"


class _BatchDim(ConversionOps):
    """timm's `pos_embed` [1, N, D] <-> SigLIP's position-embedding table [N, D]: `squeeze` at
    load, its reverse (unsqueeze) at save."""

    def __init__(self, squeeze: bool):
        self.squeeze = squeeze

    @torch.no_grad
    def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
        tensor = next(iter(input_dict.values()))
        tensor = tensor[0] if isinstance(tensor, list) else tensor
        tensor = tensor.squeeze(0) if self.squeeze else tensor.unsqueeze(0)
        return {target_patterns[0]: tensor.contiguous()}

    @property
    def reverse_op(self) -> ConversionOps:
        return _BatchDim(not self.squeeze)


def _split_qkv(kind: str) -> WeightConverter:
    """timm's fused `attn.qkv` ([3D, D] rows q, k, v) as SigLIP's q/k/v projections."""
    return WeightConverter(
        f"self_attn.qkv.{kind}",
        [f"self_attn.q_proj.{kind}", f"self_attn.k_proj.{kind}", f"self_attn.v_proj.{kind}"],
        operations=[Chunk(dim=0)],
    )


def _vision_only(transform: WeightConverter) -> WeightConverter:
    """`transform` restricted to keys under `vision.`: at save, its reverse would otherwise fuse the
    language model's q/k/v projections too (transformers' own scoping of sub-model mappings)."""
    transform.scope_prefix, transform.base_model_prefix = "vision", ""
    return transform


def checkpoint_mapping() -> list[WeightRenaming | WeightConverter]:
    """The transforms from the original checkpoint names to the model's (a fresh list each call:
    transformers scopes and consumes them)."""
    block = r"^vision\.blocks\.(\d+)\."
    layer = rf"{_VIT}.encoder.layers.\1."
    renamings = [
        WeightRenaming(r"^vision\.patch_embed\.proj\.", f"{_VIT}.embeddings.patch_embedding."),
        WeightRenaming(rf"{block}norm1\.", f"{layer}layer_norm1."),
        WeightRenaming(rf"{block}norm2\.", f"{layer}layer_norm2."),
        WeightRenaming(rf"{block}attn\.qkv\.", f"{layer}self_attn.qkv."),
        WeightRenaming(rf"{block}attn\.proj\.", f"{layer}self_attn.out_proj."),
        WeightRenaming(rf"{block}mlp\.", f"{layer}mlp."),
        WeightRenaming(r"^vision\.norm\.", f"{_VIT}.post_layernorm."),
    ]
    converters = [
        WeightConverter(
            "vision.pos_embed",
            f"{_VIT}.embeddings.position_embedding.weight",
            operations=[_BatchDim(squeeze=True)],
        ),
        *(_vision_only(_split_qkv(kind)) for kind in ("weight", "bias")),
        WeightConverter(
            ["mlp.experts.*.gate_proj.weight", "mlp.experts.*.up_proj.weight"],
            "mlp.experts.gate_up_proj",
            operations=[MergeModulelist(dim=0), Concatenate(dim=1)],
        ),
        WeightConverter(
            "mlp.experts.*.down_proj.weight", "mlp.experts.down_proj", operations=[MergeModulelist(dim=0)]
        ),
    ]
    return renamings + converters


def register_conversion() -> None:
    """Make transformers apply `checkpoint_mapping` to "deepseek_vl_v2" models (idempotent)."""
    register_checkpoint_conversion_mapping(MODEL_TYPE, checkpoint_mapping(), overwrite=True)
