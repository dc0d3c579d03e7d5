"""Aria: inputs (padded squares with a pixel mask, 16 image tokens), positions, module groups
(router, experts; shared experts in language), the router rule, LoRA targets, the checkpoint's
own layout, boxes, the real config and the real architecture's parameter counts. What every
family keeps (vision cache, prefill, shared prefix, LoRA training, experts kernels, save -> load,
generation) is in test_family_contract.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from family_inputs import PLAIN, TWO, make_sample, three_prompts
from safetensors.torch import load_file
from transformers import AriaConfig, AutoModelForImageTextToText

from vlrl.config import load_config
from vlrl.models.adapters import AriaAdapter, adapter_for
from vlrl.models.batching import collate
from vlrl.models.loading import load_model
from vlrl.training.setup import check_model_groups


@pytest.fixture(scope="module")
def lm(tiny_models):
    return load_model(tiny_models["aria"])


# ---- inputs -------------------------------------------------------------------------------------


def test_images_become_masked_490px_squares_and_16_tokens_each(lm, images):
    enc = lm.adapter.encode(make_sample([images["small"], images["big"]], TWO), PLAIN)
    assert enc.vision["pixel_values"].shape == (2, 3, 490, 490)
    assert enc.vision["pixel_mask"].shape == (2, 490, 490)
    # 112x112 is scaled up to 490x490 (all real); 300x180 to 490 x max(180 * 490/300 = 294, 336):
    # the longer side becomes max_image_size, the shorter one is raised to min_image_size 336.
    mask = enc.vision["pixel_mask"]
    assert mask[0].all()
    assert mask[1].sum(0).max() == 336 and mask[1].sum(1).max() == 490 and mask[1, :336, :490].all()
    assert lm.adapter.model_image_size((300, 180)) == (490, 336)
    assert lm.adapter.model_image_size((180, 300)) == (336, 490)
    assert lm.adapter.image_kwargs() == {"max_image_size": 490}
    ids = enc.tokens["input_ids"].tolist()
    tok = lm.adapter.tokenizer
    img, pre, post = tok.convert_tokens_to_ids(["<|img|>", "<fim_prefix>", "<fim_suffix>"])
    assert img == lm.model.config.image_token_id
    # Each image: <fim_prefix>, 16 <|img|> (14x14 patches -> 16 projector queries), <fim_suffix>.
    starts = [i for i, t in enumerate(ids) if t == pre]
    assert len(starts) == 2
    for s in starts:
        assert ids[s + 1 : s + 17] == [img] * 16 and ids[s + 17] == post
    assert ids.count(img) == 32
    assert list(enc.tokens) == ["input_ids", "attention_mask"]
    # Aria's template has no default system prompt: the prompt opens with the user turn.
    assert enc.source.text.startswith("<|im_start|>user\nImage 1: <fim_prefix><|img|><fim_suffix>")


def test_pixel_bounds_are_refused_with_the_reason(lm):
    with pytest.raises(ValueError, match="do not apply to aria.*max_image_size"):
        AriaAdapter(lm.processor, max_pixels=448 * 448)


def test_left_padded_positions_are_1d_and_skip_the_padding(lm, images):
    """Plain 1-D positions that skip the left padding (that each row then gets its prompt's own
    logits is the family contract's check)."""
    prompts = three_prompts(lm.adapter, images)
    batch = collate(prompts, lm.adapter.tokenizer.pad_token_id, padding_side="left")
    pos = lm.adapter.position_ids(lm.model, batch)
    assert pos.shape == batch["input_ids"].shape
    for row, prompt in enumerate(prompts):
        real = batch["attention_mask"][row].bool()
        assert pos[row, real].tolist() == list(range(prompt.length))


# ---- module groups, router, LoRA ---------------------------------------------------------------


def test_groups_keep_input_major_experts_and_the_shared_experts_in_language(lm):
    groups = lm.adapter.parameter_groups(lm.model)
    layers = lm.model.config.text_config.num_hidden_layers
    assert sorted(n for n, _ in groups["router"]) == [
        f"model.language_model.layers.{i}.mlp.router.weight" for i in range(layers)
    ]
    # Fused experts stored input-major: gate_up_proj [E, H, 2I], down_proj [E, I, H]; E = 4, H = 64, I = 96.
    shapes = {n.rpartition(".")[2]: tuple(p.shape) for n, p in groups["experts"]}
    assert shapes == {"gate_up_proj": (4, 64, 192), "down_proj": (4, 96, 64)}
    # Shared experts see every token, are not routed: they stay in language.
    shared = [n for n, _ in groups["language"] if ".shared_experts." in n]
    assert len(shared) == 3 * layers
    assert all(n.startswith("model.vision_tower.") for n, _ in groups["vision"])
    assert all(n.startswith("model.multi_modal_projector.") for n, _ in groups["connector"])


def test_router_softmaxes_over_the_top_k_logits(lm):
    """Aria's rule, as the adapter states it, on hand-set logits: the top 2 of [2, 1, 0, -1] are
    experts 0 and 1, weighted softmax([2, 1]) = [0.7311, 0.2689]; a token with [-1, 3, 3.5, 0]
    goes to experts 2 and 1, weighted softmax([3.5, 3]) = [0.6225, 0.3775]."""
    router = lm.model.model.language_model.layers[0].mlp.router
    h = torch.zeros(2, router.weight.shape[1])
    h[0, 0], h[1, 1] = 1.0, 1.0
    weight = torch.zeros_like(router.weight)
    weight[:, 0] = torch.tensor([2.0, 1.0, 0.0, -1.0])
    weight[:, 1] = torch.tensor([-1.0, 3.0, 3.5, 0.0])
    saved = router.weight.detach().clone()
    try:
        with torch.no_grad():
            router.weight.copy_(weight)
            logits, top_weights, index = router(h)
    finally:
        with torch.no_grad():
            router.weight.copy_(saved)
    assert index.tolist() == [[0, 1], [2, 1]]
    torch.testing.assert_close(
        top_weights, torch.tensor([[0.7311, 0.2689], [0.6225, 0.3775]]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(logits[0], torch.tensor([2.0, 1.0, 0.0, -1.0]))


def test_lora_targets_attention_the_shared_experts_and_the_fused_experts(lm):
    """The family contract trains them all; here, which they are."""
    modules, parameters = lm.adapter.lora_targets(lm.model, ("language", "experts", "router"))
    assert sorted(p.rpartition(".")[2] for p in parameters) == ["down_proj"] * 2 + ["gate_up_proj"] * 2
    # The language group's linears: attention and the shared experts (2 layers x 4 + 3).
    assert len(modules) == 14 and sum(".shared_experts." in m for m in modules) == 6
    # The projector's MultiheadAttention out_proj is never called as a module: not a target.
    connector, _ = lm.adapter.lora_targets(lm.model, ("connector",))
    assert connector and not any("multihead_attn" in m for m in connector)


# ---- checkpoints, boxes ------------------------------------------------------------


def test_saved_processor_keeps_the_image_size(lm, tmp_path):
    lm.processor.save_pretrained(tmp_path)
    assert type(lm.processor).from_pretrained(tmp_path).image_processor.max_image_size == 490


def test_checkpoint_keeps_arias_own_layout(lm, tiny_models):
    """The files hold what Aria's checkpoints and vLLM's Aria loader use: the decoder under
    `language_model.model`, the head at `language_model.lm_head`, and each layer's routed experts
    as `experts.fc1` [E, H, 2I] (gate and up, input-major) and `experts.fc2` [E, I, H], which the
    model holds as `gate_up_proj` / `down_proj` unchanged (E = 4, H = 64, I = 96)."""
    files = load_file(tiny_models["aria"] / "model.safetensors")
    assert {k.split(".")[0] for k in files} == {"language_model", "multi_modal_projector", "vision_tower"}
    assert "language_model.lm_head.weight" in files
    layers = lm.model.model.language_model.layers
    for i, layer in enumerate(layers):
        prefix = f"language_model.model.layers.{i}.mlp."
        assert files[prefix + "experts.fc1.weight"].shape == (4, 64, 192)
        assert files[prefix + "experts.fc2.weight"].shape == (4, 96, 64)
        assert torch.equal(layer.mlp.experts.gate_up_proj, files[prefix + "experts.fc1.weight"])
        assert torch.equal(layer.mlp.experts.down_proj, files[prefix + "experts.fc2.weight"])
        assert torch.equal(layer.mlp.router.weight, files[prefix + "router.weight"])
    assert len(files) == len(lm.model.state_dict())


def test_boxes_are_normalised_to_1000(lm):
    # [30, 18, 150, 90] px of a 300x180 image = [0.1, 0.1, 0.5, 0.5] of it, whatever the resize and pad.
    assert lm.adapter.box_from_pixels([30, 18, 150, 90], (300, 180)) == [100, 100, 500, 500]


# ---- the real architecture -------------------------------------------------------------------------

# config.json of rhymes-ai/Aria in transformers' layout (the Hub's `hf` revision, e.g. commit
# ba062b093be28837f2525f0a6bfda83c9eedd88a; the same values as hf-internal-testing's Aria configs);
# the vision tower's width (1152) is idefics3_vision's default, and 2 shared experts AriaTextConfig's.
ARIA = dict(
    text_config=dict(
        model_type="aria_text",
        hidden_size=2560,
        intermediate_size=1664,
        max_position_embeddings=65536,
        moe_num_experts=64,
        moe_topk=6,
        num_attention_heads=20,
        num_hidden_layers=28,
        num_key_value_heads=20,
        rope_theta=5000000,
        vocab_size=100352,
    ),
    vision_config=dict(
        model_type="idefics3_vision",
        num_attention_heads=16,
        image_size=980,
        intermediate_size=4304,
        num_hidden_layers=27,
        patch_size=14,
    ),
    projector_patch_to_query_dict={"1225": 128, "4900": 256},
    image_token_index=9,
    pad_token_id=2,
    vision_feature_layer=-1,
)


def test_real_architecture_has_the_published_parameter_counts():
    """Aria instantiated on the meta device (no memory) and counted. Published: 25.3B in all (the
    rhymes-ai/Aria model card), a 24.9B decoder and 3.9B / 3.5B activated parameters per visual /
    text token (Li et al., arXiv 2410.05993). Measured: 25.307B; decoder 24.869B; per token, the
    decoder less the (E - k) / E = 58/64 of routed expert weights it does not use, and less its
    input embedding and output head (the paper's per-token counts leave them out: with them a
    text token would use 4.12B), is 3.60B per text token and 4.04B with the 0.438B vision tower
    and projector per visual token: within 4% of the paper's rounded 3.5B and 3.9B."""
    config = AriaConfig(**ARIA)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    adapter = adapter_for(config)
    assert adapter is AriaAdapter
    groups = adapter.parameter_groups(adapter.__new__(adapter), model)
    size = {g: sum(p.numel() for _, p in ps) for g, ps in groups.items()}
    total = sum(size.values())
    assert total == 25_307_311_216
    assert round(total / 1e9, 1) == 25.3
    vision = size["vision"] + size["connector"]
    decoder = total - vision
    assert round(decoder / 1e9, 1) == 24.9
    text = config.text_config
    unused = size["experts"] * (text.moe_num_experts - text.moe_topk) / text.moe_num_experts
    embeddings = 2 * text.vocab_size * text.hidden_size  # embed_tokens and lm_head, untied
    per_text_token = (decoder - unused - embeddings) / 1e9
    per_visual_token = per_text_token + vision / 1e9
    assert per_text_token == pytest.approx(3.5, rel=0.04)  # 3.601
    assert per_visual_token == pytest.approx(3.9, rel=0.04)  # 4.040
    assert round(vision / 1e9, 3) == 0.438


def test_real_checkpoint_config_fits_the_family(lm):
    """configs/grpo_aria.yaml loads, the adapter accepts its data settings, and every group it freezes,
    LoRA-targets or rates exists in the family (the checks a run makes when the checkpoint loads)."""
    cfg = load_config(Path(__file__).parents[3] / "configs" / "grpo_aria.yaml")
    adapter = AriaAdapter(
        lm.processor, min_pixels=cfg.data.image_min_pixels, max_pixels=cfg.data.image_max_pixels
    )
    check_model_groups(cfg.model, adapter)
    assert cfg.model.freeze == ["vision", "router"]
    assert cfg.model.experts_implementation == "grouped_mm" and cfg.model.router_aux_loss_coef == 0.0
