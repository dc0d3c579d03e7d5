"""GLM-4.1V (`glm4v`) and GLM-4.5V (`glm4v_moe`): inputs and pixel bounds, 3-D positions under
padding, group sizes, the MoE router's semantics and training, LoRA targets, the checkpoint's
layout, boxes, real configs, and the real architectures' parameter counts on the meta device.
What every family keeps (vision cache, prefill, shared prefix, LoRA training, save -> load,
generation) is in test_family_contract.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from family_inputs import PLAIN, make_sample, three_prompts
from peft import get_peft_model
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, Glm4vConfig, Glm4vMoeConfig

from vlrl.config import load_config
from vlrl.data.sample import Sample
from vlrl.models.batching import collate
from vlrl.models.loading import load_model
from vlrl.rewards.perception import to_pixels
from vlrl.training.setup import check_model_groups, lora_config

FAMILIES = ("glm4v", "glm4v_moe")
TWO = "Image 1: <image> Image 2: <image> Which has more circles?"


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return {f: load_model(tiny_models[f]) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_are_patch_pairs_with_merged_image_tokens(loaded, images, family):
    lm = loaded[family]
    enc = lm.adapter.encode(make_sample([images["small"], images["big"]], TWO), PLAIN)
    # 112x112 -> 8x8 patches of 14 px. 300x180 = 54000 px is over the tiny budget of 4 x 112^2 =
    # 50176 (the processor's t x h x w = 2 x 50176), so GLM's smart_resize scales it to 280x168.
    assert enc.vision["image_grid_thw"].tolist() == [[1, 8, 8], [1, 12, 20]]
    # Each patch row: 3 channels x a temporal pair x 14 x 14 = 1176 values.
    assert enc.vision["pixel_values"].shape == (64 + 240, 1176)
    ids, types = enc.tokens["input_ids"], enc.tokens["mm_token_type_ids"]
    image = ids == lm.model.config.image_token_id
    assert image.sum().item() == (64 + 240) // 4 == 76  # 2x2 merge
    assert torch.equal(types.bool(), image) and types.max().item() == 1  # 1 = image, never video
    assert lm.adapter.model_image_size((300, 180)) == (280, 168)
    assert lm.model.config.image_token_id in lm.adapter.placeholder_token_ids()


def test_pixel_bounds_are_the_images_and_match_the_processor(tiny_models, images):
    """vlrl's bounds count the image's pixels; GLM's processor counts t x h x w (t = 2): the
    adapter translates, and its model_image_size is what the processor really produces."""
    lm = load_model(tiny_models["glm4v"], max_pixels=112 * 112)
    adapter = lm.adapter
    assert adapter.image_kwargs()["size"]["longest_edge"] == 2 * 112 * 112
    enc = adapter.encode(make_sample([images["big"]]), PLAIN)
    t, h, w = enc.vision["image_grid_thw"][0].tolist()
    # 300x180 into 12544 px: beta = sqrt(54000 / 12544) = 2.075 -> floor(144.6 / 28) x 28 = 140 and
    # floor(86.7 / 28) x 28 = 84: 140x84, 10x6 patches.
    assert adapter.model_image_size((300, 180)) == (w * 14, h * 14) == (140, 84)
    assert (t, h, w) == (1, 6, 10)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_positions_count_only_real_tokens(loaded, images, family):
    """The 3-D positions of a left-padded batch (the prefill) count only real tokens (that each
    row then gets its prompt's own logits is the family contract's check)."""
    lm = loaded[family]
    a, pad = lm.adapter, lm.adapter.tokenizer.pad_token_id
    prompts = three_prompts(a, images, TWO)
    batch = collate(prompts, pad, padding_side="left")
    positions = a.position_ids(lm.model, batch)
    width = batch["input_ids"].shape[1]
    assert positions.shape == (3, 3, width)
    # The image row: 16 tokens on a 4x4 grid at one temporal index; text after the image
    # continues on all three axes from max(4, 4) = 4 positions past the image's start.
    row, mask = batch["input_ids"][0], batch["attention_mask"][0].bool()
    img = row == lm.model.config.image_token_id
    assert positions[1, 0, img].unique().numel() == 4 and positions[2, 0, img].unique().numel() == 4
    assert positions[0, 0, img].unique().numel() == 1
    first = int(positions[0, 0, img][0])
    after = torch.nonzero(img)[-1].item() + 1
    assert positions[:, 0, after].tolist() == [first + 4] * 3
    # Text-only row: 0, 1, 2, ... from its first real token, whatever the padding.
    text_mask = batch["attention_mask"][2].bool()
    assert positions[0, 2, text_mask].tolist() == list(range(int(text_mask.sum())))
    assert int(positions[:, 0, mask].max()) + 1 < int(mask.sum())  # images take fewer positions


@pytest.mark.parametrize("family", FAMILIES)
def test_group_sizes_and_the_dense_first_layer(loaded, family):
    lm = loaded[family]
    groups = lm.adapter.parameter_groups(lm.model)
    counts = {g: sum(p.numel() for _, p in params) for g, params in groups.items()}
    # micro sizes: the vision tower 64 wide, the projector 64 -> 128 -> 64 plus the 2x2 convolution
    assert counts["connector"] == 64 * 64 * 4 + 64 + 64 * 64 + 2 * 64 + 3 * 64 * 128
    assert all(n.startswith("model.visual.") for n, _ in groups["vision"] + groups["connector"])
    assert any(n == "lm_head.weight" for n, _ in groups["language"])
    if family == "glm4v":
        return
    # Layer 0 is dense (first_k_dense_replace 1); layer 1 routes 6 experts of 64 -> 32 -> 64.
    assert [n for n, _ in groups["router"]] == ["model.language_model.layers.1.mlp.gate.weight"]
    assert counts["router"] == 6 * 64
    assert counts["experts"] == 6 * (2 * 32 * 64 + 64 * 32)
    language = {n for n, _ in groups["language"]}
    assert "model.language_model.layers.1.mlp.shared_experts.up_proj.weight" in language
    assert "model.language_model.layers.0.mlp.gate_proj.weight" in language


def test_router_semantics_sigmoid_grouped_topk_and_selection_only_bias(loaded):
    """The docstring's router: sigmoid scores; groups ranked by their two best biased scores,
    the best 2 of 3 kept, top-2 among their experts; weights = unbiased scores renormalised."""
    model = loaded["glm4v_moe"].model
    router = model.get_submodule("model.language_model.layers.1.mlp.gate")
    hidden = torch.randn(256, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, weights, chosen = router(hidden)
        scores = logits.sigmoid()
        torch.testing.assert_close(weights, scores.gather(1, chosen) / scores.gather(1, chosen).sum(-1, True))
        groups = chosen // 2  # 3 groups of 2 experts
        kept = scores.view(-1, 3, 2).sum(-1).topk(2, dim=-1).indices  # group score: its top-2 sum
        assert all(set(g) <= set(k) for g, k in zip(groups.tolist(), kept.tolist(), strict=True))
        # Grouping changes the choice: plain top-2 over all 6 would pick another expert for some tokens.
        plain = scores.topk(2, dim=-1).indices.sort(-1).values
        assert (plain != chosen.sort(-1).values).any(-1).sum() > 10
        # The correction bias steers selection only: expert 5 is always picked, with its unbiased weight.
        bias = router.e_score_correction_bias
        saved = bias.clone()
        bias[5] = 10.0
        try:
            _, biased_weights, biased = router(hidden)
        finally:
            bias.copy_(saved)
        assert (biased == 5).any(-1).all()
        torch.testing.assert_close(
            biased_weights, scores.gather(1, biased) / scores.gather(1, biased).sum(-1, True)
        )


def test_router_trains_or_freezes_bit_identically_and_its_bias_never_trains(loaded, images):
    lm = loaded["glm4v_moe"]
    model, a = lm.model, lm.adapter
    names = dict(model.named_parameters())
    assert "model.language_model.layers.1.mlp.gate.e_score_correction_bias" in dict(model.named_buffers())
    assert not any("e_score_correction_bias" in n for n in names)
    enc = a.encode(make_sample([images["small"]]), PLAIN, response="<answer>3</answer>")
    batch = collate([enc], a.tokenizer.pad_token_id)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    groups = a.parameter_groups(model)
    try:
        for frozen in ([], ["router"]):
            model.load_state_dict(initial)
            for g, params in groups.items():
                for _, p in params:
                    p.requires_grad_(g not in frozen)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
            model(**batch, labels=batch["input_ids"]).loss.backward()
            opt.step()
            opt.zero_grad()
            after = model.state_dict()
            gate = "model.language_model.layers.1.mlp.gate.weight"
            bias = "model.language_model.layers.1.mlp.gate.e_score_correction_bias"
            assert torch.equal(after[bias], initial[bias])
            assert torch.equal(after[gate], initial[gate]) == ("router" in frozen)
            experts = "model.language_model.layers.1.mlp.experts.gate_up_proj"
            assert not torch.equal(after[experts], initial[experts])
    finally:
        model.load_state_dict(initial)
        model.requires_grad_(True)


def test_lora_targets_the_fused_experts_and_the_shared_experts(loaded):
    """Layer 1's fused experts through `target_parameters`, its shared experts as Linears, never
    the router (the family contract trains them all)."""
    lm = loaded["glm4v_moe"]
    modules, parameters = lm.adapter.lora_targets(lm.model, ("language", "experts"))
    assert parameters == [
        "model.language_model.layers.1.mlp.experts.gate_up_proj",
        "model.language_model.layers.1.mlp.experts.down_proj",
    ]
    assert "model.language_model.layers.1.mlp.shared_experts.gate_proj" in modules
    assert not any(".visual." in m or m.endswith(".mlp.gate") for m in modules)


def test_checkpoint_keeps_the_hub_layout(loaded, tmp_path):
    """GLM-4.5V's published files: one gate/up/down per expert, the router's bias beside its weight."""
    lm = loaded["glm4v_moe"]
    lm.model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.language_model.layers.1.mlp.experts.5.gate_proj.weight" in keys
    assert "model.language_model.layers.1.mlp.gate.e_score_correction_bias" in keys
    assert not any(k.endswith("experts.gate_up_proj") for k in keys)


@pytest.mark.parametrize(("name", "family"), [("grpo_glm4_1v_9b", "glm4v"), ("grpo_glm4_5v", "glm4v_moe")])
def test_real_checkpoint_configs_fit_the_families(loaded, tiny_models, tmp_path, name, family):
    """configs/NAME.yaml loads; its groups exist in the family (the checks a run makes at load);
    its pixel cap holds a large image to 1280 tokens; GLM-4.5V's LoRA reaches the fused experts
    and leaves the frozen vision tower and routers alone."""
    cfg = load_config(Path(__file__).parents[3] / "configs" / f"{name}.yaml")
    lm = loaded[family]
    adapter = type(lm.adapter)(
        lm.processor, min_pixels=cfg.data.image_min_pixels, max_pixels=cfg.data.image_max_pixels
    )
    check_model_groups(cfg.model, adapter)
    Image.new("RGB", (2000, 1500), "white").save(tmp_path / "large.png")
    enc = adapter.encode(make_sample([tmp_path / "large.png"]), PLAIN)
    # 1003520 px = 1280 x 28 x 28: beta = sqrt(3e6 / 1003520) = 1.729, so 2000x1500 becomes
    # floor(1156.7 / 28) x 28 = 1148 by floor(867.5 / 28) x 28 = 840: 82x60 patches, 41x30 tokens
    assert enc.vision["image_grid_thw"].tolist() == [[1, 60, 82]]
    assert (enc.tokens["input_ids"] == lm.model.config.image_token_id).sum() == 41 * 30 <= 1280
    if family == "glm4v":
        assert cfg.model.freeze == ["vision"] and not cfg.model.lora.enabled
        return
    assert cfg.model.freeze == ["vision", "router"]
    assert cfg.model.experts_implementation == "grouped_mm" and cfg.model.router_aux_loss_coef == 0.0
    lora = lora_config(cfg.model, lm.model, adapter)
    assert lora.target_parameters == [
        "model.language_model.layers.1.mlp.experts.gate_up_proj",
        "model.language_model.layers.1.mlp.experts.down_proj",
    ]
    assert not any(".visual." in m or m.endswith("mlp.gate") for m in lora.target_modules)
    # peft accepts it as configured (its fused-parameter LoRA refuses dropout)
    fresh = load_model(tiny_models[family]).model
    peft_model = get_peft_model(fresh, lora)
    assert any(".mlp.experts." in n and "lora_B" in n for n, _ in peft_model.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_boxes_are_normalised_to_1000(loaded, images, family):
    """GLM-V's grounding format (its README): [x1, y1, x2, y2] / (W, H) x 1000, whatever the
    resize (300x180 is seen as 280x168), read back as the box rewards read a completion."""
    adapter = loaded[family].adapter
    box = [30, 18, 150, 90]
    written = adapter.box_from_pixels(box, (300, 180))
    assert written == [100, 100, 500, 500]
    sample = Sample(id="b", question="Where is the square?", answer=[box], images=[images["big"]])
    text = adapter.render_target(sample, "<|begin_of_box|>[30, 18, 150, 90]<|end_of_box|>")
    assert text == "<|begin_of_box|>[100, 100, 500, 500]<|end_of_box|>"
    [(back, _)] = to_pixels([(written, None)], adapter.box_convention, (300, 180), (280, 168))
    assert back == pytest.approx(box)


# ---- the real architectures on the meta device -----------------------------------------------
# GLM-4.5V's config.json (zai-org/GLM-4.5V; transformers' Glm4vMoeConfig defaults are the same
# checkpoint's), the fields that shape parameters.
GLM_4_5V = {
    "text_config": {
        "vocab_size": 151552,
        "hidden_size": 4096,
        "intermediate_size": 10944,
        "num_hidden_layers": 46,
        "num_attention_heads": 96,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "attention_bias": True,
        "moe_intermediate_size": 1408,
        "n_routed_experts": 128,
        "num_experts_per_tok": 8,
        "n_shared_experts": 1,
        "n_group": 1,
        "topk_group": 1,
        "first_k_dense_replace": 1,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": [8, 12, 12],
        },
    },
    "vision_config": {
        "depth": 24,
        "hidden_size": 1536,
        "num_heads": 12,
        "intermediate_size": 10944,
        "out_hidden_size": 4096,
        "image_size": 336,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "tie_word_embeddings": False,
}
# GLM-4.1V-9B-Thinking's config.json (zai-org/GLM-4.1V-9B-Thinking; transformers' Glm4vConfig
# defaults, documented as that checkpoint's, and its Megatron conversion script's defaults).
GLM_4_1V = {
    "text_config": {
        "vocab_size": 151552,
        "hidden_size": 4096,
        "intermediate_size": 13696,
        "num_hidden_layers": 40,
        "num_attention_heads": 32,
        "num_key_value_heads": 2,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": [8, 12, 12],
        },
    },
    "vision_config": {
        "depth": 24,
        "hidden_size": 1536,
        "num_heads": 12,
        "intermediate_size": 13696,
        "out_hidden_size": 4096,
        "image_size": 336,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "tie_word_embeddings": False,
}


def _meta_params(config) -> dict[str, int]:
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return {n: p.numel() for n, p in model.named_parameters()}


def test_real_glm4_1v_parameter_count():
    """GLM-4.1V-9B-Thinking: 10.3B parameters (as MiniCPM-V 4.5's report, arXiv 2509.18154, lists
    it; the "9B" of the name is its GLM-4-9B decoder)."""
    params = _meta_params(Glm4vConfig(**GLM_4_1V))
    total = sum(params.values())
    assert total == 10_292_777_472
    assert total == pytest.approx(10.3e9, rel=0.005)
    language = sum(n for name, n in params.items() if not name.startswith("model.visual."))
    assert language == pytest.approx(9.4e9, rel=0.01)  # GLM-4-9B-0414, its 151k-token embeddings included


def test_real_glm4_5v_total_and_active_parameters():
    """GLM-4.5V: "106B total, 12B active" (model card, from GLM-4.5-Air). Its weight files hold
    107,710,933,120 values (18,106 tensors, among them 45 x 128 float32 router biases, which are
    buffers here): the parameters must be exactly the rest. Active per token: all but the
    (E - k) / E = 120/128 of routed-expert weights a token skips; the card's 12B counts the
    language decoder's active weights without the embedding and output matrices."""
    params = _meta_params(Glm4vMoeConfig(**GLM_4_5V))
    total = sum(params.values())
    assert total == 107_710_933_120 - 45 * 128
    assert total == pytest.approx(106e9, rel=0.02)
    routed = sum(n for name, n in params.items() if ".mlp.experts." in name)
    assert routed == 45 * 128 * 3 * 4096 * 1408
    active = total - routed * (128 - 8) // 128
    assert active == 14_282_805_760
    vision = sum(n for name, n in params.items() if name.startswith("model.visual."))
    embeddings = sum(n for name, n in params.items() if "embed_tokens" in name or name == "lm_head.weight")
    assert active - vision - embeddings == pytest.approx(12e9, rel=0.02)
