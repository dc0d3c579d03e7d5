"""Qwen3.5 and Qwen3.5-MoE: the hybrid Gated-DeltaNet + attention cache under right padding and
re-indexed per row, module groups (linear attention in language, router, experts, shared expert),
the router rule, LoRA targets, the checkpoint's expert layout, boxes, and the real architectures'
parameter counts and configs. What every family keeps (vision cache, left-padded prefill, shared
prefix, LoRA training, save -> load, generation) is in test_family_contract.py, which
gives these models the same long DeltaNet memory as the fixture here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from family_inputs import PLAIN, TWO, make_sample, three_prompts
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForImageTextToText, Qwen3_5Config, Qwen3_5MoeConfig
from transformers.cache_utils import DynamicLayer, LinearAttentionLayer

from vlrl.config import load_config
from vlrl.models.loading import load_model
from vlrl.models.logprobs import response_logprobs
from vlrl.models.prefix import RowStatesLayer, prefill

FAMILIES = ("qwen3_5", "qwen3_5_moe")


@pytest.fixture(scope="module")
def loaded(tiny_models):
    """The tiny models, their DeltaNet layers given a long memory.

    A random init draws each head's decay rate A from U(0.01, 16) (transformers' _init_weights),
    so a head may forget all but the last few tokens (decay exp(-A softplus(.)) per token), and
    prompts with the same chat-template ending would leave nearly the same recurrent state. With
    A in [0.02, 0.5] the state carries the whole prompt, so that a state given to the wrong row,
    or a pad that leaked into it, shows in the outputs."""
    models = {f: load_model(tiny_models[f]) for f in FAMILIES}
    with torch.no_grad():
        for lm in models.values():
            for layer in lm.model.model.language_model.layers:
                if hasattr(layer, "linear_attn"):
                    a = layer.linear_attn.A_log
                    a.copy_(torch.linspace(0.02, 0.5, a.numel()).log())
    return models


# ---- architecture and inputs ----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_is_hybrid_with_one_cache_layer_per_kind(loaded, family):
    """Even the micro model has a Gated-DeltaNet layer and a full-attention layer, and the cache
    transformers builds for it holds conv + recurrent states for the first, keys and values for
    the second."""
    lm = loaded[family]
    text = lm.model.config.text_config
    assert text.layer_types == ["linear_attention", "full_attention"]
    layers = lm.model.model.language_model.layers
    assert hasattr(layers[0], "linear_attn") and hasattr(layers[1], "self_attn")
    with torch.no_grad():
        prefix = prefill(lm.model, lm.adapter, [lm.adapter.encode(make_sample([], "2 + 3?"), PLAIN)], 0)
    assert [type(layer) for layer in prefix.cache.layers] == [LinearAttentionLayer, DynamicLayer]
    conv, state = prefix.cache.layers[0].conv_states[0], prefix.cache.layers[0].recurrent_states[0]
    # conv: [rows, 2 x key dim + value dim, kernel 4]; recurrent: [rows, value heads, d_k, d_v]
    heads = text.linear_num_key_heads
    assert conv.shape == (1, (2 * heads + 2 * heads) * 32, 4)
    assert state.shape == (1, 2 * heads, 32, 32) and text.linear_num_value_heads == 2 * heads
    if family == "qwen3_5_moe":
        mlp = layers[0].mlp
        assert mlp.gate.num_experts == 4 and mlp.gate.top_k == 2 and hasattr(mlp, "shared_expert")


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_are_16px_patches_merged_2x2(loaded, images, family):
    lm = loaded[family]
    enc = lm.adapter.encode(make_sample([images["small"], images["big"]], TWO), PLAIN)
    # 112x112 -> 128x128 (multiples of 32) = 8x8 patches of 16 px; 300x180 -> 288x192 = 18x12.
    assert enc.vision["image_grid_thw"].tolist() == [[1, 8, 8], [1, 12, 18]]
    assert lm.adapter.model_image_size((300, 180)) == (288, 192)
    assert enc.vision["pixel_values"].shape == (64 + 12 * 18, 3 * 2 * 16 * 16)
    image = enc.tokens["input_ids"] == lm.model.config.image_token_id
    assert image.sum().item() == 16 + 6 * 9
    assert torch.equal(enc.tokens["mm_token_type_ids"].bool(), image)


# ---- padding: the recurrent state must not absorb pad tokens ----------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_right_padded_scoring_gives_each_sequence_its_own_logprobs(loaded, images, family):
    """The padded path (`response_logprobs`, one right-padded pass) equals scoring each sequence
    alone: pads come after every real token of a row (the left-padded prefill is the contract's)."""
    lm = loaded[family]
    a = lm.adapter
    prompts = three_prompts(a, images)
    responses = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10, 11, 12, 13])]
    seqs = [p.with_response(r) for p, r in zip(prompts, responses, strict=True)]
    lengths = [r.numel() for r in responses]
    blocked = torch.tensor(a.placeholder_token_ids())
    pad = a.tokenizer.pad_token_id
    with torch.no_grad():
        together, _ = response_logprobs(lm.model, seqs, lengths, pad, 1.0, blocked)
        for row, seq in enumerate(seqs):
            alone, _ = response_logprobs(lm.model, [seq], lengths[row : row + 1], pad, 1.0, blocked)
            torch.testing.assert_close(together[row, : lengths[row]], alone[0], atol=1e-5, rtol=1e-4)


# ---- the shared prefix: each row its own prompt's states --------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_get_their_own_prompts_linear_attention_states(loaded, images, family):
    lm = loaded[family]
    prompts = three_prompts(lm.adapter, images)
    with torch.no_grad():
        prefix = prefill(lm.model, lm.adapter, prompts, lm.adapter.tokenizer.pad_token_id)
        before = prefix.cache.layers[0].recurrent_states[0].clone()
        rows = prefix.select(torch.tensor([2, 0, 2, 1]))
    layer = rows.cache.layers[0]
    assert isinstance(layer, RowStatesLayer)
    for row, p in enumerate([2, 0, 2, 1]):
        assert torch.equal(layer.recurrent_states[0][row], before[p])
    # different prompts, different summaries (the states are of order 1e-3: small embeddings)
    assert (before[0] - before[1]).abs().max() > 0.1 * before.abs().max()


# ---- module groups, router, LoRA ------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_groups_put_linear_attention_and_the_shared_expert_in_language(loaded, family):
    lm = loaded[family]
    groups = lm.adapter.parameter_groups(lm.model)
    assert {n.rpartition(".")[0] for n, _ in groups["connector"]} == {
        "model.visual.merger.norm",
        "model.visual.merger.linear_fc1",
        "model.visual.merger.linear_fc2",
    }
    assert all(n.startswith("model.visual.") for n, _ in groups["vision"])
    language = [n for n, _ in groups["language"]]
    # The linear-attention layer, all of it, is language.
    assert sum(".linear_attn." in n for n in language) == 9  # A_log, dt_bias, conv, norm, 5 projections
    if family == "qwen3_5":
        return
    assert sorted(n for n, _ in groups["router"]) == [
        f"model.language_model.layers.{i}.mlp.gate.weight" for i in range(2)
    ]
    # Fused routed experts: gate_up_proj [E, 2I, H], down_proj [E, H, I], E = 4, I = 48, H = 64.
    assert {n.rpartition(".")[2]: tuple(p.shape) for n, p in groups["experts"]} == {
        "gate_up_proj": (4, 96, 64),
        "down_proj": (4, 64, 48),
    }
    # The shared expert and its gate are dense weights every token uses: language.
    mlp = {n.split(".mlp.")[1] for n in language if ".mlp." in n}
    assert mlp == {
        "shared_expert.gate_proj.weight",
        "shared_expert.up_proj.weight",
        "shared_expert.down_proj.weight",
        "shared_expert_gate.weight",
    }


def test_router_is_softmax_top_k_renormalised_and_the_shared_expert_always_adds(loaded):
    """The rule the MoE adapter's docstring states, on the tiny model's first MoE block."""
    mlp = loaded["qwen3_5_moe"].model.model.language_model.layers[0].mlp
    h = torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, weights, index = mlp.gate(h)
        probs = logits.float().softmax(-1)
        top = probs.topk(2, dim=-1)
        assert torch.equal(index, top.indices)
        torch.testing.assert_close(weights, top.values / top.values.sum(-1, keepdim=True))
        out = mlp(h[None])[0]
        routed = mlp.experts(h, index, weights)
        shared = torch.sigmoid(mlp.shared_expert_gate(h)) * mlp.shared_expert(h)
    torch.testing.assert_close(out, routed + shared)
    assert shared.abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_the_linear_attention_projections_and_the_fused_experts(loaded, family):
    """LoRA adapts the Gated-DeltaNet layer's five projections, the full-attention layer, the
    (shared expert's) MLP and the MoE's fused experts (the family contract trains them all)."""
    lm = loaded[family]
    modules, parameters = lm.adapter.lora_targets(lm.model, ("language", "experts"))
    linear_attn = sorted(m.rpartition(".")[2] for m in modules if ".linear_attn." in m)
    assert linear_attn == ["in_proj_a", "in_proj_b", "in_proj_qkv", "in_proj_z", "out_proj"]
    assert sum(".self_attn." in m for m in modules) == 4  # q, k, v, o of the full-attention layer
    if family == "qwen3_5_moe":
        assert sorted(p.rpartition(".")[2] for p in parameters) == ["down_proj"] * 2 + ["gate_up_proj"] * 2
        assert sum(".shared_expert." in m for m in modules) == 6  # 3 projections x 2 layers
    else:
        assert parameters == [] and sum(".mlp." in m for m in modules) == 6


# ---- checkpoint, boxes ---------------------------------------------------------------------------


def test_checkpoint_keeps_the_hub_layout_and_the_layer_types(loaded, tmp_path):
    """The file keeps the Hub layout, one [I, H] / [H, I] matrix per expert and projection, and the
    hybrid layer pattern comes back with the config."""
    lm = loaded["qwen3_5_moe"]
    lm.model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        expert = {
            k.rpartition("experts.")[2]: f.get_slice(k).get_shape()
            for k in f.keys()  # noqa: SIM118 (not iterable)
            if ".0.mlp.experts." in k
        }
    assert len(expert) == 12 and expert["3.gate_proj.weight"] == [48, 64]
    assert expert["3.up_proj.weight"] == [48, 64] and expert["3.down_proj.weight"] == [64, 48]
    again = AutoConfig.from_pretrained(tmp_path)
    assert again.text_config.layer_types == ["linear_attention", "full_attention"]


def test_boxes_are_normalised_to_1000(loaded):
    adapter = loaded["qwen3_5"].adapter
    assert adapter.box_from_pixels([30, 18, 150, 90], (300, 180)) == [100, 100, 500, 500]
    assert loaded["qwen3_5_moe"].adapter.box_convention == "norm1000"


# ---- the real architectures ---------------------------------------------------------------------

# The released checkpoints' config.json values. Language models: the model cards of
# Qwen/Qwen3.5-9B and Qwen/Qwen3.5-35B-A3B ("Model Overview": hidden 4096 / 2048, 32 / 40 layers
# as 8 / 10 x (3 Gated DeltaNet + 1 Gated Attention), DeltaNet 32 V / 16 QK heads of 128,
# attention 16 Q / 4 or 2 KV heads of 256, rotary dimension 64, FFN 12288, or 256 experts of 512
# with 8 routed + 1 shared, vocabulary 248320) and their config.json (mrope_section [11, 11, 10],
# rope_theta 1e7, untied embeddings). Vision tower (config.json "vision_config"; the same in both):
# 27 blocks of 1152, MLP 4304, 16 heads, 16 px patches, 2304 position embeddings.
_VISION = dict(
    depth=27,
    hidden_size=1152,
    intermediate_size=4304,
    num_heads=16,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=2304,
)
_TEXT = dict(
    vocab_size=248320,
    head_dim=256,
    linear_num_key_heads=16,
    linear_num_value_heads=32,
    linear_key_head_dim=128,
    linear_value_head_dim=128,
    linear_conv_kernel_dim=4,
    full_attention_interval=4,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 10000000.0,
        "partial_rotary_factor": 0.25,
        "mrope_section": [11, 11, 10],
        "mrope_interleaved": True,
    },
    max_position_embeddings=262144,
    tie_word_embeddings=False,
)


def _qwen3_5_9b():
    text = dict(
        _TEXT,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=32,
        num_attention_heads=16,
        num_key_value_heads=4,
    )
    return Qwen3_5Config(
        text_config=text, vision_config=dict(_VISION, out_hidden_size=4096), tie_word_embeddings=False
    )


def _qwen3_5_35b_a3b():
    text = dict(
        _TEXT,
        hidden_size=2048,
        num_hidden_layers=40,
        num_attention_heads=16,
        num_key_value_heads=2,
        num_experts=256,
        num_experts_per_tok=8,
        moe_intermediate_size=512,
        shared_expert_intermediate_size=512,
    )
    return Qwen3_5MoeConfig(
        text_config=text, vision_config=dict(_VISION, out_hidden_size=2048), tie_word_embeddings=False
    )


def _counts(config) -> dict[str, float]:
    """Parameters in billions: total, the language model's (all but the vision tower), and its
    active share: all but the (E - k) / E of routed expert weights a token does not use."""
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    total = sum(sizes.values())
    text = total - sum(v for n, v in sizes.items() if n.startswith("model.visual."))
    experts = sum(v for n, v in sizes.items() if ".mlp.experts." in n)
    cfg = config.text_config
    unused = experts * (cfg.num_experts - cfg.num_experts_per_tok) / cfg.num_experts if experts else 0
    return {"total": total / 1e9, "text": text / 1e9, "active": (text - unused) / 1e9}


def test_real_architectures_have_the_published_parameter_counts():
    """Instantiated on the meta device (no memory), counted, and compared with the model cards'
    language-model numbers at the precision they are published ("Number of Parameters: 9B";
    "35B in total and 3B activated"). The multi-token-prediction head of the checkpoints is not
    part of transformers' model (its weights are skipped at load)."""
    dense = _counts(_qwen3_5_9b())
    assert round(dense["text"]) == 9  # 8,953,803,264
    # llama.cpp's GGUF of the language model reports 8.95B parameters
    assert dense["text"] == pytest.approx(8.95, abs=0.005)
    assert round(dense["total"], 2) == 9.41  # with the 0.456B vision tower
    moe = _counts(_qwen3_5_35b_a3b())
    assert round(moe["text"]) == 35  # 34,660,610,688
    assert round(moe["active"]) == 3  # 3,454,988,928: attention, DeltaNet, shared experts, 8/256 routed
    assert round(moe["total"], 2) == 35.11  # with the 0.447B vision tower


@pytest.mark.parametrize(
    ("config", "family"),
    [("grpo_qwen3_5_9b.yaml", "qwen3_5"), ("grpo_qwen3_5_35b_a3b.yaml", "qwen3_5_moe")],
)
def test_real_checkpoint_configs_name_the_familys_groups(loaded, config, family):
    """The shipped configs load, and every group they freeze or rate exists in the family."""
    cfg = load_config(Path(__file__).parents[3] / "configs" / config)
    adapter = loaded[family].adapter
    adapter.check_groups(cfg.model.freeze, "model.freeze")
    adapter.check_groups(cfg.model.group_lr, "model.group_lr")
    assert "vision" in cfg.model.freeze
    if family == "qwen3_5_moe":
        assert cfg.model.freeze == ["vision", "router"]
        assert cfg.model.experts_implementation == "grouped_mm" and cfg.model.router_aux_loss_coef == 0.0
