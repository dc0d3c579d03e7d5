"""DeepSeek-VL2 built from transformers' parts.

The original (`DeepseekVLV2ForCausalLM` of DeepSeek-VL2's `modeling_deepseek_vl_v2.py`, with
`siglip_vit.py` and `modeling_deepseek.py`) pins transformers 4.38 and timm. Here:

- `vision`: transformers' `SiglipVisionModel` without its pooling head: the original's
  `VisionTransformer.forward_features` (timm ViT, pre-LN blocks, fused qkv with bias, tanh GELU,
  final LayerNorm, no class token, no layer scale; its `attn_pool` head is never run);
- `projector`: `DeepseekVLV2Projector`, the 2x2 token merge then an MLP (`projector.layers`);
- `image_newline`, `view_seperator` (the original's spelling): the 2-D layout's markers;
- `language`: `.model` (transformers' DeepSeek-MoE text model chosen by
  `configuration.text_config_from_language`) and `.lm_head`, so that parameter names are the
  original checkpoints' `language.model.*` and `language.lm_head.weight`.

The checkpoint's timm names and per-expert weights are converted at load and written back at
save by `conversion.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    DeepseekV2Model,
    DeepseekV3Model,
    GenerationMixin,
    PreTrainedModel,
    SiglipVisionModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2TextModel
from transformers.utils.deprecation import deprecate_kwarg

from vlrl.models.deepseek_vl2.configuration import DeepseekVLV2Config

__all__ = [
    "DeepseekVLV2ForCausalLM",
    "DeepseekVLV2Language",
    "DeepseekVLV2Projector",
    "downsample_tokens",
    "layout_image_tokens",
]

_TEXT_MODEL_OF_CONFIG = {
    "deepseek_ocr2_text": DeepseekOcr2TextModel,
    "deepseek_v2": DeepseekV2Model,
    "deepseek_v3": DeepseekV3Model,
}


def downsample_tokens(x: torch.Tensor, ratio: int) -> torch.Tensor:
    """Merge each `ratio x ratio` block of a square token grid into one token.

    x: [n, h*w, c] -> [n, ceil(h/ratio) * ceil(w/ratio), c * ratio**2]. The grid is padded with
    zeros at the bottom and right to a multiple of `ratio` (SigLIP-384/14's 27 -> 28), and each
    merged token's channels are ordered as `F.unfold` orders them, channel-major:
    [c0 at (0,0), c0 at (0,1), c0 at (1,0), c0 at (1,1), c1 at (0,0), ...]
    (`MlpProjector.forward`, "downsample_mlp_gelu", in modeling_deepseek_vl_v2.py).
    """
    n, hw, c = x.shape
    side = math.isqrt(hw)
    if side * side != hw:
        raise ValueError(f"deepseek_vl2 projector: {hw} vision tokens per tile are no square grid")
    pad = -side % ratio
    grid = F.pad(x.reshape(n, side, side, c), (0, 0, 0, pad, 0, pad))
    merged = F.unfold(grid.permute(0, 3, 1, 2), kernel_size=ratio, stride=ratio)  # [n, c*r*r, hw']
    return merged.transpose(1, 2)


class DeepseekVLV2Projector(nn.Module):
    """The original `MlpProjector` of type "downsample_mlp_gelu": `downsample_tokens`, then
    Linear(input_dim * r^2, n_embed * mlp_ratio), (GELU, Linear) * (depth - 2), GELU,
    Linear(n_embed * mlp_ratio, n_embed), as `self.layers` (checkpoint names
    `projector.layers.{0,2,...}`)."""

    def __init__(self, projector: dict):
        super().__init__()
        self.downsample_ratio = projector["downsample_ratio"]
        hidden = projector["n_embed"] * projector["mlp_ratio"]
        modules: list[nn.Module] = [nn.Linear(projector["input_dim"] * self.downsample_ratio**2, hidden)]
        for _ in range(1, projector["depth"] - 1):
            modules += [nn.GELU(), nn.Linear(hidden, hidden)]
        modules += [nn.GELU(), nn.Linear(hidden, projector["n_embed"])]
        self.layers = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: [tiles, h*w, input_dim] -> [tiles, h'*w', n_embed]."""
        return self.layers(downsample_tokens(features, self.downsample_ratio))


def layout_image_tokens(
    tiles: torch.Tensor,
    crops: list[tuple[int, int]],
    newline: torch.Tensor,
    separator: torch.Tensor,
    global_view_pos: str = "head",
) -> torch.Tensor:
    """The image token sequence of `prepare_inputs_embeds` (modeling_deepseek_vl_v2.py, tile_tag "2D").

    tiles: [sum(1 + tw*th), h*w, d], per image its global view then its local tiles row-major;
    crops: per image (tw, th), the local tiles across and down. Per image: the global view as an
    h x w grid with `newline` closing each row (h*(w+1) tokens), `separator`, and the local tiles
    stitched into one (th*h) x (tw*w) grid, each row closed by `newline`; with `global_view_pos`
    "tail" the local part comes first. Returns [sum of the images' lengths, d], images in order.
    """
    _, hw, d = tiles.shape
    side = math.isqrt(hw)
    out, start = [], 0
    for tw, th in crops:
        view = tiles[start].reshape(side, side, d)
        local = tiles[start + 1 : start + 1 + tw * th].reshape(th, tw, side, side, d)
        local = local.permute(0, 2, 1, 3, 4).reshape(th * side, tw * side, d)
        start += 1 + tw * th
        rows_global = torch.cat([view, newline.expand(side, 1, d)], dim=1).reshape(-1, d)
        rows_local = torch.cat([local, newline.expand(th * side, 1, d)], dim=1).reshape(-1, d)
        parts = [rows_global, separator[None], rows_local]
        out.append(torch.cat(parts if global_view_pos == "head" else parts[::-1]))
    return torch.cat(out)


class DeepseekVLV2Language(nn.Module):
    """The original `DeepseekV2ForCausalLM`'s two parts: `model` (transformers' text model for
    the config, see `text_config_from_language`) and an untied `lm_head`."""

    def __init__(self, text_config):
        super().__init__()
        self.model = _TEXT_MODEL_OF_CONFIG[text_config.model_type](text_config)
        self.lm_head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=False)


class DeepseekVLV2PreTrainedModel(PreTrainedModel):
    config: DeepseekVLV2Config
    config_class = DeepseekVLV2Config
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "SiglipEncoderLayer",
        "DeepseekOcr2TextDecoderLayer",
        "DeepseekV2DecoderLayer",
        "DeepseekV3DecoderLayer",
    ]
    _skip_keys_device_placement = "past_key_values"
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    # The published checkpoints carry the ViT's attention-pool head, which the original never runs.
    _keys_to_ignore_on_load_unexpected = [r"^vision\.attn_pool\."]
    _keep_in_fp32_modules_strict = ["gate.weight", "e_score_correction_bias"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DeepseekVLV2ForCausalLM):
            # modeling_deepseek_vl_v2.py: randn(n_embed) / sqrt(n_embed)
            std = module.config.projector_config["n_embed"] ** -0.5
            init.normal_(module.image_newline, std=std)
            init.normal_(module.view_seperator, std=std)


class DeepseekVLV2ForCausalLM(DeepseekVLV2PreTrainedModel, GenerationMixin):
    """DeepSeek-VL2 (tiny / small / base) with the original checkpoints' parameter names."""

    def __init__(self, config: DeepseekVLV2Config):
        super().__init__(config)
        self.vision = SiglipVisionModel(config.vision_tower_config)
        self.projector = DeepseekVLV2Projector(config.projector_config)
        n_embed = config.projector_config["n_embed"]
        self.image_newline = nn.Parameter(torch.zeros(n_embed))
        self.view_seperator = nn.Parameter(torch.zeros(n_embed))
        self.language = DeepseekVLV2Language(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.language.lm_head

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        images_spatial_crop: torch.Tensor,
        return_dict: bool = True,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Image token features, images in order.

        pixel_values: [tiles, 3, S, S], per image its global view then its local tiles row-major;
        images_spatial_crop: [images, 2] long, per image (tiles across, tiles down). Returns
        `last_hidden_state` [tiles, h*w, n_embed] (projected tiles) and `pooler_output`
        [image tokens, n_embed]: every image's sequence of `layout_image_tokens`, concatenated.
        `return_dict` is accepted as transformers' models accept it; the output is always one.
        """
        crops = _crops(images_spatial_crop)
        tiles = sum(1 + tw * th for tw, th in crops)
        if pixel_values.ndim != 4 or pixel_values.shape[0] != tiles:
            raise ValueError(
                f"deepseek_vl2: pixel_values {tuple(pixel_values.shape)} do not hold the {tiles} tiles "
                f"[tiles, 3, S, S] that images_spatial_crop {crops} asks for (1 + w*h per image)"
            )
        if not crops:  # a batch without images: nothing for the vision tower to run on
            none = self.image_newline.new_zeros(0, self.image_newline.shape[0])
            return BaseModelOutputWithPooling(last_hidden_state=none[:, None], pooler_output=none)
        features = self.vision(pixel_values.to(self.vision.dtype), **kwargs).last_hidden_state
        projected = self.projector(features)
        sequence = layout_image_tokens(
            projected, crops, self.image_newline, self.view_seperator, self.config.global_view_pos
        )
        return BaseModelOutputWithPooling(last_hidden_state=projected, pooler_output=sequence)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal LM pass; image features replace the `config.image_token_id` tokens in order.

        `mm_encoder_outputs={"image": get_image_features(...)}` stands in for `pixel_values` and
        `images_spatial_crop`. Positions are plain 1-D (the original has no multimodal RoPE).
        """
        image = (mm_encoder_outputs or {}).get("image")
        if inputs_embeds is not None and (image is not None or pixel_values is not None):
            raise ValueError(
                "deepseek_vl2: images need input_ids to find their <image> tokens; with inputs_embeds "
                "the image features must already be in place (pass no pixel_values or mm_encoder_outputs)"
            )
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            if image is None and pixel_values is not None:
                image = self.get_image_features(pixel_values, images_spatial_crop)
            if image is not None:
                inputs_embeds = self._place_image_features(input_ids, inputs_embeds, image.pooler_output)
        out = self.language.model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.language.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )

    def _place_image_features(
        self, input_ids: torch.Tensor, embeds: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """embeds [B, T, D] with the `image_token_id` positions (row-major) set to features [N, D]."""
        mask = input_ids == self.config.image_token_id
        slots = int(mask.sum())
        if slots != features.shape[0]:
            raise ValueError(
                f"deepseek_vl2: the prompts hold {slots} image tokens (id {self.config.image_token_id}) "
                f"but the images give {features.shape[0]} features"
                + (
                    "; config.json's image_token_id must be the id of the tokenizer's <image>"
                    if slots == 0
                    else ""
                )
            )
        return embeds.masked_scatter(mask[..., None], features.to(embeds.dtype))

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool = False, **kwargs):
        """transformers' inputs, with the images' crop table kept to the first (prefill) step like
        the pixels (transformers drops `pixel_values` and `mm_encoder_outputs` after it)."""
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            inputs.pop("images_spatial_crop", None)
        return inputs


def _crops(images_spatial_crop: torch.Tensor | None) -> list[tuple[int, int]]:
    """Per image (tiles across, tiles down) from [images, 2]."""
    if images_spatial_crop is None or images_spatial_crop.ndim != 2 or images_spatial_crop.shape[-1] != 2:
        shape = None if images_spatial_crop is None else tuple(images_spatial_crop.shape)
        raise ValueError(
            f"deepseek_vl2: images_spatial_crop must be [images, 2] (tiles across, down), got {shape}"
        )
    crops = [(int(w), int(h)) for w, h in images_spatial_crop.tolist()]
    if any(w < 1 or h < 1 for w, h in crops):
        raise ValueError(f"deepseek_vl2: images_spatial_crop {crops} holds an image with no local tile")
    return crops
