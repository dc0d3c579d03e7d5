"""InternVL3.5-MoE (InternVL around a Qwen3-MoE language model, -HF layout): the adapter picked from
the config, inputs, module groups (router, experts), the router rule, LoRA targets, the
checkpoint's per-expert layout, boxes, the real config and the real architecture's parameter
counts. What every family keeps (vision cache, prefill, shared prefix, LoRA training, experts
kernels, save -> load, generation) is in test_family_contract.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from family_inputs import PLAIN, TWO, make_sample, three_prompts
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForImageTextToText, InternVLConfig

from vlrl.config import load_config
from vlrl.models.adapters import InternVLAdapter, InternVLMoeAdapter, adapter_for
from vlrl.models.batching import collate
from vlrl.models.loading import load_model
from vlrl.training.setup import check_model_groups


@pytest.fixture(scope="module")
def lm(tiny_models):
    return load_model(tiny_models["internvl_moe"])


# ---- which adapter -----------------------------------------------------------------------------


def test_the_text_model_type_picks_the_moe_adapter(lm, tiny_models):
    """Both checkpoints are model_type internvl; the language model's type tells them apart."""
    moe = AutoConfig.from_pretrained(tiny_models["internvl_moe"])
    dense = AutoConfig.from_pretrained(tiny_models["internvl"])
    assert (moe.model_type, moe.text_config.model_type) == ("internvl", "qwen3_moe")
    assert (dense.model_type, dense.text_config.model_type) == ("internvl", "qwen2")
    assert adapter_for(moe) is InternVLMoeAdapter and adapter_for(dense) is InternVLAdapter
    assert type(lm.adapter) is InternVLMoeAdapter and lm.adapter.family == "internvl_moe"
    # Another language model (InternVL3.5-8B's dense Qwen3) has no key of its own: plain InternVL.
    assert adapter_for(InternVLConfig(text_config={"model_type": "qwen3"})) is InternVLAdapter
    with pytest.raises(
        ValueError, match="model type 'llava' is not supported; supported: .*internvl/qwen3_moe"
    ):
        adapter_for(AutoConfig.for_model("llava"))


def test_inputs_are_the_tiled_internvl_ones(lm, images):
    """The vision side and processor are InternVL's: a 5:3 image tiles as 2x1 plus a thumbnail,
    16 <IMG_CONTEXT> tokens per 112 px tile; plain 1-D positions."""
    enc = lm.adapter.encode(make_sample([images["small"], images["big"]], TWO), PLAIN)
    assert enc.vision["pixel_values"].shape == (4, 3, 112, 112)
    assert (enc.tokens["input_ids"] == lm.model.config.image_token_id).sum() == 16 * 4
    assert list(enc.tokens) == ["input_ids", "attention_mask"]
    batch = collate(three_prompts(lm.adapter, images), lm.adapter.tokenizer.pad_token_id, padding_side="left")
    pos = lm.adapter.position_ids(lm.model, batch)
    real = batch["attention_mask"][2].bool()
    assert pos.shape == batch["input_ids"].shape and pos[2, real].tolist() == list(range(int(real.sum())))


# ---- module groups, router, LoRA ---------------------------------------------------------------


def test_groups_route_every_mlp(lm):
    groups = lm.adapter.parameter_groups(lm.model)
    layers = lm.model.config.text_config.num_hidden_layers
    assert sorted(n for n, _ in groups["router"]) == [
        f"model.language_model.layers.{i}.mlp.gate.weight" for i in range(layers)
    ]
    # Fused experts: gate_up_proj [E, 2I, H] and down_proj [E, H, I] per layer, E = 4, H = 64, I = 48.
    shapes = {n.rpartition(".")[2]: tuple(p.shape) for n, p in groups["experts"]}
    assert shapes == {"gate_up_proj": (4, 96, 64), "down_proj": (4, 64, 48)}
    # Qwen3-MoE has no shared experts and here no dense layers: language keeps nothing of the MLPs.
    assert not any(".mlp." in n for n, _ in groups["language"])


def test_router_is_softmax_top_k_renormalised(lm):
    """Qwen3-MoE's rule (`norm_topk_prob`), as the adapter states it, on hand-set logits: for
    [2, 1, 0, -1] the softmax is [0.6439, 0.2369, 0.0871, 0.0321]; the top 2 (experts 0, 1)
    renormalised are [0.7311, 0.2689]."""
    gate = lm.model.model.language_model.layers[0].mlp.gate
    assert gate.top_k == 2 and gate.norm_topk_prob
    h = torch.zeros(1, gate.weight.shape[1])
    h[0, 0] = 1.0
    weight = torch.zeros_like(gate.weight)
    weight[:, 0] = torch.tensor([2.0, 1.0, 0.0, -1.0])
    saved = gate.weight.detach().clone()
    try:
        with torch.no_grad():
            gate.weight.copy_(weight)
            logits, top_weights, index = gate(h)
    finally:
        with torch.no_grad():
            gate.weight.copy_(saved)
    torch.testing.assert_close(
        logits.softmax(-1), torch.tensor([[0.6439, 0.2369, 0.0871, 0.0321]]), atol=1e-4, rtol=0
    )
    assert index.tolist() == [[0, 1]]
    torch.testing.assert_close(top_weights, torch.tensor([[0.7311, 0.2689]]), atol=1e-4, rtol=0)


def test_lora_targets_attention_and_the_fused_experts(lm):
    """The family contract trains them all; here, which they are."""
    modules, parameters = lm.adapter.lora_targets(lm.model, ("language", "experts", "router"))
    assert sorted(p.rpartition(".")[2] for p in parameters) == ["down_proj"] * 2 + ["gate_up_proj"] * 2
    assert len(modules) == 8 and all(".self_attn." in m for m in modules)  # q, k, v, o x 2 layers


# ---- checkpoints, boxes ------------------------------------------------------------


def test_checkpoint_keeps_the_hub_layout_of_per_expert_weights(lm, tiny_models):
    """The files hold the -HF checkpoints' layout, which vLLM and the Hub use: the decoder under
    `language_model.model`, each expert's own `gate_proj` [I, H], `up_proj` [I, H], `down_proj`
    [H, I]; the model fuses them at load into `gate_up_proj` [E, 2I, H] (gate rows first) and
    `down_proj` [E, H, I] (E = 4, H = 64, I = 48)."""
    files = load_file(tiny_models["internvl_moe"] / "model.safetensors")
    assert {k.split(".")[0] for k in files} == {"language_model", "multi_modal_projector", "vision_tower"}
    for i, layer in enumerate(lm.model.model.language_model.layers):
        prefix = f"language_model.model.layers.{i}.mlp."
        experts = [
            {w: files[f"{prefix}experts.{j}.{w}.weight"] for w in ("gate_proj", "up_proj", "down_proj")}
            for j in range(4)
        ]
        assert [tuple(e["gate_proj"].shape) for e in experts] == [(48, 64)] * 4
        assert [tuple(e["down_proj"].shape) for e in experts] == [(64, 48)] * 4
        fused = torch.stack([torch.cat([e["gate_proj"], e["up_proj"]]) for e in experts])
        assert torch.equal(layer.mlp.experts.gate_up_proj, fused)
        assert torch.equal(layer.mlp.experts.down_proj, torch.stack([e["down_proj"] for e in experts]))
        assert torch.equal(layer.mlp.gate.weight, files[prefix + "gate.weight"])


def test_boxes_are_normalised_to_1000(lm):
    # InternVL's grounding data writes boxes normalised to 0-1000, the MoE models' included.
    assert lm.adapter.box_from_pixels([30, 18, 150, 90], (300, 180)) == [100, 100, 500, 500]


# ---- the real architecture -------------------------------------------------------------------------

# InternVL3_5-30B-A3B-HF: InternViT-300M-448px-V2_5 (transformers' InternVLVisionConfig defaults, the
# InternVL3-hf vision tower, with its qkv bias) and Qwen3-30B-A3B's language model (its config.json:
# 48 layers of 2048, 32 query / 4 key-value heads of 128, 128 experts of 768, top 8, vocabulary
# 151936, untied head), joined by InternVL's pixel shuffle (0.5) and MLP projector.
INTERNVL3_5_30B_A3B = dict(
    text_config=dict(
        model_type="qwen3_moe",
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        num_experts=128,
        num_experts_per_tok=8,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
    ),
    vision_config=dict(
        model_type="internvl_vision",
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        attention_bias=True,
        image_size=[448, 448],
        patch_size=[14, 14],
    ),
    image_seq_length=256,
    downsample_ratio=0.5,
    projector_hidden_act="gelu",
    vision_feature_layer=-1,
    tie_word_embeddings=False,
)


def test_real_architecture_has_the_published_parameter_counts():
    """InternVL3.5-30B-A3B instantiated on the meta device (no memory) and counted. Published: 30.8B
    in all with a 0.3B vision tower (the InternVL3.5 model cards and report, arXiv 2508.18265), and
    for its Qwen3-30B-A3B language model 30.5B total, 3.3B activated, 29.9B non-embedding (the
    Qwen3-30B-A3B model card; Qwen counts the embeddings in the activated number). Measured:
    30.849B; language model 30.532B, active 3.353B (all but the (E - k) / E = 120/128 of routed
    expert weights a token does not use), 29.910B without its embedding and head."""
    config = InternVLConfig(**INTERNVL3_5_30B_A3B)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    adapter = adapter_for(config)
    assert adapter is InternVLMoeAdapter
    groups = adapter.parameter_groups(adapter.__new__(adapter), model)
    size = {g: sum(p.numel() for _, p in ps) for g, ps in groups.items()}
    total = sum(size.values())
    assert total == 30_848_730_112
    assert round(total / 1e9, 1) == 30.8
    assert round(size["vision"] / 1e9, 1) == 0.3
    text_config = config.text_config
    text = total - size["vision"] - size["connector"]
    unused = (
        size["experts"]
        * (text_config.num_experts - text_config.num_experts_per_tok)
        / text_config.num_experts
    )
    embeddings = 2 * text_config.vocab_size * text_config.hidden_size  # embed_tokens and lm_head, untied
    assert round(text / 1e9, 1) == 30.5
    assert round((text - unused) / 1e9, 1) == 3.4  # 3.353: published (rounded down) as 3.3B
    assert (text - unused) / 1e9 == pytest.approx(3.3, rel=0.02)
    assert round((text - embeddings) / 1e9, 1) == 29.9


def test_real_checkpoint_config_fits_the_family(lm):
    """configs/grpo_internvl3_5_30b_a3b.yaml loads, the adapter accepts its data settings, and every
    group it freezes, LoRA-targets or rates exists in the family (the checks a run makes when the
    checkpoint loads)."""
    cfg = load_config(Path(__file__).parents[3] / "configs" / "grpo_internvl3_5_30b_a3b.yaml")
    adapter = InternVLMoeAdapter(
        lm.processor, min_pixels=cfg.data.image_min_pixels, max_pixels=cfg.data.image_max_pixels
    )
    check_model_groups(cfg.model, adapter)
    assert cfg.model.freeze == ["vision", "router"]
    assert cfg.model.experts_implementation == "grouped_mm" and cfg.model.router_aux_loss_coef == 0.0
