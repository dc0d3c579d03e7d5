"""Qwen3-VL and Qwen3-VL-MoE: inputs and M-RoPE positions, DeepStack features in the vision cache
and the connector, the router rule, LoRA targets, the checkpoint's expert layout, boxes, and the
real architectures' parameter counts and configs. What every family keeps (vision cache, shared
prefix, LoRA training, save -> load, generation) is in test_family_contract.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from family_inputs import PLAIN, TWO, make_sample, three_prompts
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, Qwen3VLConfig, Qwen3VLMoeConfig

from vlrl.config import load_config
from vlrl.models.adapters import VisionCache
from vlrl.models.batching import collate
from vlrl.models.loading import load_model

FAMILIES = ("qwen3_vl", "qwen3_vl_moe")


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return {f: load_model(tiny_models[f]) for f in FAMILIES}


# ---- inputs and positions -------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_are_16px_patches_merged_2x2(loaded, images, family):
    lm = loaded[family]
    enc = lm.adapter.encode(make_sample([images["small"], images["big"]], TWO), PLAIN)
    # 112x112 -> 128x128 (sides rounded to multiples of 32) = 8x8 patches of 16 px. 300x180 ->
    # 288x192 (54 Kpx, within the 64 Kpx budget) = 18x12 patches.
    assert enc.vision["image_grid_thw"].tolist() == [[1, 8, 8], [1, 12, 18]]
    assert lm.adapter.model_image_size((112, 112)) == (128, 128)
    assert lm.adapter.model_image_size((300, 180)) == (288, 192)
    # Each patch row: 3 channels x 2 frames x 16 x 16.
    assert enc.vision["pixel_values"].shape == (64 + 12 * 18, 1536)
    image = enc.tokens["input_ids"] == lm.model.config.image_token_id
    assert image.sum().item() == 16 + 6 * 9  # one token per 2x2 patches
    assert torch.equal(enc.tokens["mm_token_type_ids"].bool(), image)


@pytest.mark.parametrize("family", FAMILIES)
def test_positions_spread_images_on_a_grid_and_ignore_padding(loaded, images, family):
    lm = loaded[family]
    prompts = three_prompts(lm.adapter, images)
    pad = lm.adapter.tokenizer.pad_token_id
    for side in ("left", "right"):
        batch = collate(prompts, pad, padding_side=side)
        pos = lm.adapter.position_ids(lm.model, batch)
        assert pos.shape == (3, 3, batch["input_ids"].shape[1])  # (t, h, w) x rows x length
        for row, prompt in enumerate(prompts):
            real = batch["attention_mask"][row].bool()
            alone = lm.adapter.position_ids(lm.model, collate([prompt], pad))[:, 0]
            assert torch.equal(pos[:, row, real], alone)  # padding shifts nothing
    # Row 0 alone: its 16 image tokens sit on a 4x4 grid starting at the image's first position
    # s on every axis; the text after it resumes at s + 4 on all three axes.
    ids = prompts[0].tokens["input_ids"]
    pos = lm.adapter.position_ids(lm.model, collate(prompts[:1], pad))[:, 0]
    img = (ids == lm.model.config.image_token_id).nonzero()[:, 0]
    s = int(img[0])
    assert pos[:, img[0]].tolist() == [s, s, s] and pos[:, img[-1]].tolist() == [s, s + 3, s + 3]
    assert pos[:, img[-1] + 1].tolist() == [s + 4] * 3
    # The text-only row counts 0, 1, 2, ... on every axis.
    text = lm.adapter.position_ids(lm.model, collate(prompts[2:], pad))[:, 0]
    assert all(text[i].tolist() == list(range(prompts[2].length)) for i in range(3))


# ---- DeepStack, module groups, router, LoRA targets, checkpoint layout -----------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_cache_holds_both_deepstack_taps(loaded, images, family):
    """The cache keeps DeepStack's features beside the merged ones (the family contract checks
    that zeroing them moves the log-probs): 2 taps, each the 3 images' features (16, 54, 16)."""
    lm = loaded[family]
    prompts = three_prompts(lm.adapter, images)[:2]
    with torch.no_grad():
        cache = VisionCache.concat([lm.adapter.vision_cache(lm.model, p.vision) for p in prompts])
    deep = cache.output["deepstack_features"]
    assert len(deep) == len(lm.model.config.vision_config.deepstack_visual_indexes) == 2
    assert [[t.shape[0] for t in layer] for layer in deep] == [[16, 54, 16]] * 2


@pytest.mark.parametrize("family", FAMILIES)
def test_groups_split_deepstack_into_the_connector_and_experts_out_of_language(loaded, family):
    lm = loaded[family]
    groups = lm.adapter.parameter_groups(lm.model)
    connector = {n.split(".")[2] for n, _ in groups["connector"]}
    assert connector == {"merger", "deepstack_merger_list"}
    assert all(n.startswith("model.visual.") for n, _ in groups["vision"] + groups["connector"])
    if family == "qwen3_vl":
        return
    layers = lm.model.config.text_config.num_hidden_layers
    assert sorted(n for n, _ in groups["router"]) == [
        f"model.language_model.layers.{i}.mlp.gate.weight" for i in range(layers)
    ]
    # Fused experts: gate_up_proj [E, 2I, H] and down_proj [E, H, I] per layer, E = 4, H = 64, I = 48.
    shapes = {n.rpartition(".")[2]: tuple(p.shape) for n, p in groups["experts"]}
    assert shapes == {"gate_up_proj": (4, 96, 64), "down_proj": (4, 64, 48)}
    # The language group keeps attention, norms, embeddings and head, nothing of the MoE blocks.
    assert not any(".mlp." in n for n, _ in groups["language"])


def test_router_is_softmax_top_k_renormalised(loaded):
    """The rule the adapter's docstring states, on the tiny model's first router."""
    gate = loaded["qwen3_vl_moe"].model.model.language_model.layers[0].mlp.gate
    h = torch.randn(6, gate.hidden_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, weights, index = gate(h)
    probs = logits.float().softmax(-1)
    top = probs.topk(2, dim=-1)
    assert torch.equal(index, top.indices)
    torch.testing.assert_close(weights, top.values / top.values.sum(-1, keepdim=True))
    assert torch.allclose(weights.sum(-1), torch.ones(6))


def test_lora_targets_are_attention_and_the_fused_experts(loaded):
    """The MoE layers have no dense MLP: LoRA adapts attention and, through peft's
    `target_parameters`, each layer's two fused expert weights (the contract trains them)."""
    lm = loaded["qwen3_vl_moe"]
    modules, parameters = lm.adapter.lora_targets(lm.model, ("language", "experts", "router"))
    layers = lm.model.config.text_config.num_hidden_layers
    assert (
        sorted(p.rpartition(".")[2] for p in parameters) == ["down_proj"] * layers + ["gate_up_proj"] * layers
    )
    assert len(modules) == 4 * layers and all(".self_attn." in m for m in modules)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_holds_the_experts_as_in_memory(loaded, family, tmp_path):
    lm = loaded[family]
    lm.model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not iterable)
    # transformers 5.25 writes the fused experts as they are in memory ([E, 2I, H], [E, H, I]);
    # the Hub's Qwen3-VL-MoE files hold them transposed, which its loader detects by shape.
    assert saved == {n: tuple(p.shape) for n, p in lm.model.named_parameters()}


def test_boxes_are_normalised_to_1000(loaded):
    adapter = loaded["qwen3_vl"].adapter
    # [30, 18, 150, 90] px of a 300x180 image = [0.1, 0.1, 0.5, 0.5] of it, whatever the resize.
    assert adapter.box_from_pixels([30, 18, 150, 90], (300, 180)) == [100, 100, 500, 500]
    assert loaded["qwen3_vl_moe"].adapter.box_convention == "norm1000"


# ---- the real architectures ---------------------------------------------------------------------

# config.json of the Hugging Face checkpoints Qwen/Qwen3-VL-8B-Instruct, Qwen/Qwen3-VL-30B-A3B-Instruct
# and Qwen/Qwen3-VL-235B-A22B-Instruct (architecture fields; the Thinking variants share them). The
# vision tower (27 layers of 1152, DeepStack taps 8, 16, 24) is the same in all three; only its
# output width follows the language model.
_VISION = dict(
    depth=27,
    hidden_size=1152,
    intermediate_size=4304,
    num_heads=16,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=2304,
    deepstack_visual_indexes=[8, 16, 24],
)
_ROPE = {
    "rope_type": "default",
    "rope_theta": 5000000,
    "mrope_section": [24, 20, 20],
    "mrope_interleaved": True,
}
_TEXT = dict(
    vocab_size=151936,
    head_dim=128,
    rope_parameters=_ROPE,
    max_position_embeddings=262144,
    tie_word_embeddings=False,
)


def _qwen3_vl_8b():
    text = dict(
        _TEXT,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
    )
    return Qwen3VLConfig(
        text_config=text, vision_config=dict(_VISION, out_hidden_size=4096), tie_word_embeddings=False
    )


def _qwen3_vl_moe(hidden, layers, heads, moe_intermediate):
    text = dict(
        _TEXT,
        hidden_size=hidden,
        intermediate_size=3 * hidden,  # unused: every layer is sparse
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=4,
        moe_intermediate_size=moe_intermediate,
        num_experts=128,
        num_experts_per_tok=8,
        decoder_sparse_step=1,
    )
    return Qwen3VLMoeConfig(
        text_config=text, vision_config=dict(_VISION, out_hidden_size=hidden), tie_word_embeddings=False
    )


def _counts(config) -> dict[str, float]:
    """Parameters in billions: total, the language model's total and active share (all but the
    (E - k) / E of routed expert weights a token does not use), the language model without its
    input and output embeddings."""
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    total = sum(sizes.values())
    text = total - sum(v for n, v in sizes.items() if n.startswith("model.visual."))
    experts = sum(v for n, v in sizes.items() if ".mlp.experts." in n)
    cfg = config.text_config
    unused = experts * (cfg.num_experts - cfg.num_experts_per_tok) / cfg.num_experts if experts else 0
    embeddings = 2 * cfg.vocab_size * cfg.hidden_size
    return {
        "total": total / 1e9,
        "text": text / 1e9,
        "active": (text - unused) / 1e9,
        "non_embedding": (text - embeddings) / 1e9,
    }


def test_real_architectures_have_the_published_parameter_counts():
    """Instantiated on the meta device (no memory), counted, and compared with the published
    numbers at their precision. Totals: the safetensors size on the Hub model pages (8.77B, 31.1B
    (31.07B), 236B). The MoE language models are Qwen3-30B-A3B's and Qwen3-235B-A22B's
    (their model cards: 30.5B total / 3.3B activated / 29.9B non-embedding; 235B / 22B / 234B)."""
    dense = _counts(_qwen3_vl_8b())
    assert round(dense["total"], 2) == 8.77  # 8,767,123,696
    a3b = _counts(_qwen3_vl_moe(2048, 48, 32, 768))
    assert round(a3b["total"], 2) == 31.07  # 31,070,754,032
    # language model: 30.53B total, 3.35B active, 29.91B without embeddings
    assert a3b["text"] == pytest.approx(30.5, rel=0.01)
    assert a3b["active"] == pytest.approx(3.3, rel=0.02)
    assert a3b["non_embedding"] == pytest.approx(29.9, rel=0.01)
    a22b = _counts(_qwen3_vl_moe(4096, 94, 64, 1536))
    assert round(a22b["total"]) == 236  # 235,670,022,896
    # language model: 235.09B total, 22.19B active, 233.85B without embeddings
    assert a22b["text"] == pytest.approx(235, rel=0.01)
    assert a22b["active"] == pytest.approx(22, rel=0.02)
    assert a22b["non_embedding"] == pytest.approx(234, rel=0.01)


@pytest.mark.parametrize(
    ("config", "family"),
    [("grpo_qwen3_vl_8b.yaml", "qwen3_vl"), ("grpo_qwen3_vl_30b_a3b.yaml", "qwen3_vl_moe")],
)
def test_real_checkpoint_configs_name_the_familys_groups(loaded, config, family):
    """The shipped configs load, and every group they freeze, LoRA-target or rate exists in the
    family (the check a run makes when the checkpoint loads)."""
    cfg = load_config(Path(__file__).parents[3] / "configs" / config)
    adapter = loaded[family].adapter
    adapter.check_groups(cfg.model.freeze, "model.freeze")
    adapter.check_groups(cfg.model.group_lr, "model.group_lr")
    assert "vision" in cfg.model.freeze
    if family == "qwen3_vl_moe":
        assert cfg.model.freeze == ["vision", "router"]
        assert cfg.model.experts_implementation == "grouped_mm" and cfg.model.router_aux_loss_coef == 0.0
