"""DeepSeek-VL2's configuration, in the original `config.json` layout.

The published checkpoints (deepseek-ai/deepseek-vl2-tiny, -small, -base) carry a `config.json`
with `model_type` "deepseek_vl_v2" and three nested sections, `vision_config` (the timm-style
SigLIP ViT of `siglip_vit.py`), `projector_config` (`MlpProjector`) and `language_config`
(`DeepseekV2Config` of `configuration_deepseek.py`), all in DeepSeek-VL2's
`modeling_deepseek_vl_v2.py`. They are kept here as plain dicts with the original field names
and the original defaults filled in, so that `save_pretrained` writes a config the original
code, vLLM and SGLang read. `image_token_id` is ours (the original processor finds `<image>`
in the tokenizer).

What the sections become in transformers' parts is derived once and never serialised:
`text_config` (`text_config_from_language`; transformers' caches and generation read it through
`get_text_config()`) and `vision_tower_config` (`siglip_config_from_vision`). Both are the
config's sub-configs, so that attention, experts and dtype settings reach the sub-models.

Variants the model built from transformers' parts would get wrong fail here, naming the field.
Fields that change nothing at inference are kept and written back untouched: `lm_head` and
`rm_head` (in -base's config; the original `DeepseekV2ForCausalLM` builds its untied `lm_head`
whatever they say), `pretraining_tp` (a split of the same matmul), and `aux_loss_alpha` /
`seq_aux`, the original's load-balancing loss, which it adds only in training and which is not
reproduced here (its `noaux_tc` gate refuses training altogether).
"""

from __future__ import annotations

from typing import Any

from transformers import DeepseekV2Config, DeepseekV3Config, PreTrainedConfig, SiglipVisionConfig
from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2TextConfig

__all__ = [
    "LANGUAGE_DEFAULTS",
    "PUBLISHED_IMAGE_TOKEN_IDS",
    "PROJECTOR_DEFAULTS",
    "VISION_DEFAULTS",
    "DeepseekVLV2Config",
    "siglip_config_from_vision",
    "text_config_from_language",
]

# Id of `<image>` in the published tokenizers, by the language model's vocabulary size (the
# original processor adds `<image>` to the tokenizer when missing and reads its id back, so the
# checkpoints' config.json never holds it):
# - 129280 (tiny, base): 128815, printed by the original processor for deepseek-vl2 in
#   deepseek-ai/DeepSeek-VL2 issue #17 ("<image>:128815", followed by <|ref|> 128816 ...);
# - 102400 (small, DeepSeek-V2's vocabulary): 100015, mlx-vlm's DeepSeek-VL2 default
#   (Blaizzy/mlx-vlm, mlx_vlm/models/deepseek_vl_v2/config.py, `image_token_index`).
# Any other vocabulary (vlrl's tiny builds) must give `image_token_id` in config.json.
PUBLISHED_IMAGE_TOKEN_IDS = {129280: 128815, 102400: 100015}

# `VisionEncoderConfig.__init__` defaults (modeling_deepseek_vl_v2.py) plus the two fields the
# model reads from its class attributes (`weight_init`, `deterministic`, `num_recomputing_layers`).
VISION_DEFAULTS: dict[str, Any] = {
    "model_name": "siglip_large_patch16_384",
    "image_size": 384,
    "patch_size": 16,
    "width": 1024,
    "layers": 24,
    "heads": 16,
    "mlp_ratio": 4,
    "global_pool": "map",
    "ignore_head": True,
    "class_token": False,
    "num_classes": 0,
    "use_checkpoint": False,
    "weight_init": "skip",
    "deterministic": False,
    "num_recomputing_layers": 0,
}

# `MlpProjectorConfig` defaults (modeling_deepseek_vl_v2.py); `token_pooling` is a class attribute.
PROJECTOR_DEFAULTS: dict[str, Any] = {
    "projector_type": "downsample_mlp_gelu",
    "input_dim": 1152,
    "n_embed": 2048,
    "depth": 2,
    "mlp_ratio": 1,
    "downsample_ratio": 2,
    "token_pooling": False,
}

# `DeepseekV2Config.__init__` defaults (configuration_deepseek.py), the original spelling of
# 'gready' included: it is no method the gate knows, so a config that leaves `topk_method` out
# fails in the original too.
LANGUAGE_DEFAULTS: dict[str, Any] = {
    "vocab_size": 102400,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "moe_intermediate_size": 1407,
    "num_hidden_layers": 30,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "n_shared_experts": None,
    "n_routed_experts": None,
    "ep_size": 1,
    "routed_scaling_factor": 1.0,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "topk_method": "gready",
    "n_group": None,
    "topk_group": None,
    "num_experts_per_tok": None,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 0,
    "norm_topk_prob": False,
    "scoring_func": "softmax",
    "aux_loss_alpha": 0.001,
    "seq_aux": True,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "pad_token_id": None,
    "bos_token_id": 100000,
    "eos_token_id": 100001,
    "pretraining_tp": 1,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "use_mla": True,
}

# Routing the gate of modeling_deepseek.py implements: method -> the scoring it is used with here.
_SCORING_OF_TOPK_METHOD = {"greedy": "softmax", "group_limited_greedy": "softmax", "noaux_tc": "sigmoid"}


def _fail(field: str, value: Any, supported: Any) -> None:
    raise ValueError(f"deepseek_vl_v2 config: {field} {value!r} is not supported (supported: {supported})")


def _require(section: dict, name: str, field: str, supported: tuple) -> None:
    if section[name] not in supported:
        _fail(f"{field}.{name}", section[name], ", ".join(map(repr, supported)))


def _with_defaults(section: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """The section as a dict (a config object's `to_dict()` too), original defaults filled in."""
    if isinstance(section, PreTrainedConfig):
        section = section.to_dict()
    section = dict(section or {})
    section.pop("transformers_version", None)
    return {**defaults, **section}


def _check_vision(vision: dict[str, Any]) -> None:
    _require(vision, "ignore_head", "vision_config", (True,))
    _require(vision, "class_token", "vision_config", (False,))
    _require(vision, "num_classes", "vision_config", (0,))


def _check_projector(projector: dict[str, Any], vision: dict[str, Any]) -> None:
    _require(projector, "projector_type", "projector_config", ("downsample_mlp_gelu",))
    _require(projector, "token_pooling", "projector_config", (False, None))
    if projector["input_dim"] != vision["width"]:
        _fail(
            "projector_config.input_dim", projector["input_dim"], f"vision_config.width = {vision['width']}"
        )


def _check_language(lang: dict[str, Any]) -> None:
    name = "language_config"
    _require(lang, "topk_method", name, tuple(_SCORING_OF_TOPK_METHOD))
    scoring = _SCORING_OF_TOPK_METHOD[lang["topk_method"]]
    if lang["scoring_func"] != scoring:
        _fail(
            f"{name}.scoring_func",
            lang["scoring_func"],
            f"{scoring!r} with topk_method {lang['topk_method']!r}",
        )
    for field in ("n_routed_experts", "n_shared_experts", "num_experts_per_tok"):
        if not lang[field]:
            _fail(
                f"{name}.{field}", lang[field], "a positive number (dense DeepSeek-V2 models are not built)"
            )
    _require(lang, "moe_layer_freq", name, (1,))
    _require(lang, "ep_size", name, (1,))
    _require(lang, "rope_scaling", name, (None,))
    _require(lang, "tie_word_embeddings", name, (False,))
    if lang["topk_method"] == "noaux_tc":
        # transformers' DeepseekV3 router masks unselected groups with -inf, the original with 0;
        # the two agree when no group is masked.
        if lang["topk_group"] != lang["n_group"]:
            _fail(f"{name}.topk_group", lang["topk_group"], f"n_group = {lang['n_group']} with noaux_tc")
        _require(lang, "use_mla", name, (True,))
        if lang["norm_topk_prob"] and lang["num_experts_per_tok"] == 1:
            # the original skips the normalisation for a single expert, DeepseekV3 does not
            _fail(f"{name}.norm_topk_prob", True, "False with num_experts_per_tok 1")
    else:
        # DeepseekV2's and DeepseekOcr2's softmax routers never renormalise the top-k weights
        if lang["norm_topk_prob"] and lang["num_experts_per_tok"] > 1:
            _fail(f"{name}.norm_topk_prob", True, f"False with topk_method {lang['topk_method']!r}")
    if lang["topk_method"] in ("group_limited_greedy", "noaux_tc"):
        groups = lang["n_group"]
        if not groups or lang["n_routed_experts"] % groups or not lang["topk_group"]:
            _fail(f"{name}.n_group", groups, "a divisor of n_routed_experts, with topk_group set")
    if not lang["use_mla"] and lang["hidden_size"] % lang["num_attention_heads"]:
        _fail(f"{name}.num_attention_heads", lang["num_attention_heads"], "a divisor of hidden_size")


def _image_token_id(given: int | None, vocab_size: int) -> int:
    if given is not None:
        if not 0 <= given < vocab_size:
            _fail("image_token_id", given, f"an id below language_config.vocab_size = {vocab_size}")
        return given
    if vocab_size not in PUBLISHED_IMAGE_TOKEN_IDS:
        _fail(
            "image_token_id",
            None,
            f"an explicit id: language_config.vocab_size {vocab_size} is none of the published "
            f"checkpoints' ({', '.join(map(str, PUBLISHED_IMAGE_TOKEN_IDS))})",
        )
    return PUBLISHED_IMAGE_TOKEN_IDS[vocab_size]


def siglip_config_from_vision(vision: dict[str, Any]) -> SiglipVisionConfig:
    """transformers' SigLIP config of the original `vision_config` (siglip_vit.py's
    `VisionTransformer`: LayerNorm eps 1e-6, `GELU(approximate='tanh')`, MLP hidden
    `int(width * mlp_ratio)`, e.g. 4304 for SO400M's 1152 * 3.7362), without the pooling head."""
    return SiglipVisionConfig(
        hidden_size=vision["width"],
        intermediate_size=int(vision["width"] * vision["mlp_ratio"]),
        num_hidden_layers=vision["layers"],
        num_attention_heads=vision["heads"],
        num_channels=3,
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
        vision_use_head=False,
    )


def text_config_from_language(lang: dict[str, Any]) -> PreTrainedConfig:
    """transformers' config of the language model described by the original `language_config`.

    - `use_mla: false` (deepseek-vl2-tiny): the original's decoder layers use `LlamaAttention`
      (modeling_deepseek.py, `ATTENTION_CLASSES["mha_eager"]`) -> `DeepseekOcr2TextConfig`,
      DeepSeek-MoE with standard attention and half-split RoPE over the whole head.
    - `use_mla: true`, softmax routing (-small) -> `DeepseekV2Config`.
    - `noaux_tc` + sigmoid (-base) -> `DeepseekV3Config` with `rope_interleave` (the original
      `apply_rotary_pos_emb` first de-interleaves the rope dims).
    Dense layers: the first `first_k_dense_replace` (`moe_layer_freq` is 1).
    """
    common = {
        "vocab_size": lang["vocab_size"],
        "hidden_size": lang["hidden_size"],
        "intermediate_size": lang["intermediate_size"],
        "moe_intermediate_size": lang["moe_intermediate_size"],
        "num_hidden_layers": lang["num_hidden_layers"],
        "num_attention_heads": lang["num_attention_heads"],
        "num_key_value_heads": lang["num_key_value_heads"] or lang["num_attention_heads"],
        "n_routed_experts": lang["n_routed_experts"],
        "n_shared_experts": lang["n_shared_experts"],
        "num_experts_per_tok": lang["num_experts_per_tok"],
        "routed_scaling_factor": float(lang["routed_scaling_factor"]),
        "n_group": lang["n_group"],
        "topk_group": lang["topk_group"],
        "hidden_act": lang["hidden_act"],
        "max_position_embeddings": lang["max_position_embeddings"],
        "initializer_range": lang["initializer_range"],
        "rms_norm_eps": float(lang["rms_norm_eps"]),
        "use_cache": lang["use_cache"],
        "pad_token_id": lang["pad_token_id"],
        "bos_token_id": lang["bos_token_id"],
        "eos_token_id": lang["eos_token_id"],
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(lang["rope_theta"])},
        "attention_bias": lang["attention_bias"],
        "attention_dropout": lang["attention_dropout"],
    }
    layers = lang["num_hidden_layers"]
    first_dense = lang["first_k_dense_replace"]
    if not lang["use_mla"]:
        return DeepseekOcr2TextConfig(
            **common,
            topk_method=lang["topk_method"],
            mlp_layer_types=["dense" if i < first_dense else "sparse" for i in range(layers)],
        )
    # MLA shares one latent among all heads: the original never reads num_key_value_heads there.
    common["num_key_value_heads"] = lang["num_attention_heads"]
    mla = {
        "kv_lora_rank": lang["kv_lora_rank"],
        "q_lora_rank": lang["q_lora_rank"],
        "qk_rope_head_dim": lang["qk_rope_head_dim"],
        "qk_nope_head_dim": lang["qk_nope_head_dim"],
        "v_head_dim": lang["v_head_dim"],
        "first_k_dense_replace": first_dense,
    }
    if lang["topk_method"] == "noaux_tc":
        return DeepseekV3Config(**common, **mla, norm_topk_prob=lang["norm_topk_prob"], rope_interleave=True)
    return DeepseekV2Config(**common, **mla, topk_method=lang["topk_method"], norm_topk_prob=False)


class DeepseekVLV2Config(PreTrainedConfig):
    """DeepSeek-VL2 (`model_type` "deepseek_vl_v2"), as in the published `config.json`.

    `vision_config`, `projector_config`, `language_config`: dicts with the original field names
    and defaults (see the module docstring); `tile_tag` (only "2D"), `global_view_pos` ("head" or
    "tail"), `candidate_resolutions` (the processor's tilings, [[w, h], ...] in pixels);
    `image_token_id`: the `<image>` placeholder the image features replace (default: the
    published tokenizer's, `PUBLISHED_IMAGE_TOKEN_IDS`).
    """

    model_type = "deepseek_vl_v2"
    sub_configs_defaults = {"text_config": PreTrainedConfig, "vision_tower_config": SiglipVisionConfig}

    def __init__(
        self,
        vision_config: dict | None = None,
        projector_config: dict | None = None,
        language_config: dict | None = None,
        tile_tag: str = "2D",
        global_view_pos: str = "head",
        candidate_resolutions: Any = ((384, 384),),
        image_token_id: int | None = None,
        **kwargs,
    ):
        self.vision_config = _with_defaults(vision_config, VISION_DEFAULTS)
        self.projector_config = _with_defaults(projector_config, PROJECTOR_DEFAULTS)
        self.language_config = _with_defaults(language_config, LANGUAGE_DEFAULTS)
        self.tile_tag = tile_tag
        self.global_view_pos = global_view_pos
        self.candidate_resolutions = [list(r) for r in candidate_resolutions]
        self.image_token_id = _image_token_id(image_token_id, self.language_config["vocab_size"])
        if tile_tag != "2D":
            _fail("tile_tag", tile_tag, "'2D'")
        if global_view_pos not in ("head", "tail"):
            _fail("global_view_pos", global_view_pos, "'head', 'tail'")
        _check_vision(self.vision_config)
        _check_projector(self.projector_config, self.vision_config)
        _check_language(self.language_config)
        if self.projector_config["n_embed"] != self.language_config["hidden_size"]:
            _fail(
                "projector_config.n_embed",
                self.projector_config["n_embed"],
                f"language_config.hidden_size = {self.language_config['hidden_size']}",
            )
        self.text_config = text_config_from_language(self.language_config)
        self.vision_tower_config = siglip_config_from_vision(self.vision_config)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The original layout: the derived sub-configs are not saved."""
        out = super().to_dict()
        for derived in self.sub_configs_defaults:
            out.pop(derived, None)
        return out
