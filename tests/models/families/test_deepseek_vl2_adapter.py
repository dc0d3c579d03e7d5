"""DeepSeek-VL2's adapter on the two tiny checkpoints (standard attention like -tiny, MLA like
-small): module groups (router, experts; shared experts and MLA projections in language), the
placeholder never sampled, routing replay's combine weights against hand numbers and against the
live routers, LoRA targets, the vision cache, the image size inside the tiles, and boxes in the
family's 0-999 convention read by the box rewards (the original README's grounding example).
What every family keeps is in test_family_contract.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from family_inputs import PLAIN, make_sample
from safetensors import safe_open

from vlrl.models.adapters import (
    DeepseekVL2Adapter,
    DeepseekVL2BaseAdapter,
    DeepseekVL2MlaAdapter,
    adapter_for,
)
from vlrl.models.batching import collate
from vlrl.models.boxes import BOX_CONVENTIONS
from vlrl.models.deepseek_vl2 import DeepseekVLV2Config
from vlrl.models.loading import load_model
from vlrl.rewards import REWARDS
from vlrl.rewards.boxes import parse_boxes

FAMILIES = ("deepseek_vl2", "deepseek_vl2_mla")


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return {family: load_model(tiny_models[family]) for family in FAMILIES}


# ---- checkpoint and adapter ---------------------------------------------------------------------


def test_each_variant_gets_its_adapter_and_the_original_names_on_disk(loaded, tiny_models):
    assert type(loaded["deepseek_vl2"].adapter) is DeepseekVL2Adapter
    assert type(loaded["deepseek_vl2_mla"].adapter) is DeepseekVL2MlaAdapter
    # -base's decoder (noaux_tc routing: DeepSeek-V3 in transformers) is an MLA one with sigmoid scores
    small = loaded["deepseek_vl2_mla"].model.config
    base = DeepseekVLV2Config(
        vision_config=small.vision_config,
        projector_config=small.projector_config,
        image_token_id=small.image_token_id,
        language_config={
            **small.language_config,
            "topk_method": "noaux_tc",
            "scoring_func": "sigmoid",
            "norm_topk_prob": True,
        },
    )
    assert adapter_for(base) is DeepseekVL2BaseAdapter
    assert (
        issubclass(DeepseekVL2BaseAdapter, DeepseekVL2MlaAdapter)
        and DeepseekVL2BaseAdapter.router_scores == "sigmoid"
    )
    assert DeepseekVL2MlaAdapter.router_scores == DeepseekVL2Adapter.router_scores == "softmax"
    with safe_open(str(tiny_models["deepseek_vl2"] / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    for name in (
        "vision.blocks.0.attn.qkv.weight",
        "vision.pos_embed",
        "projector.layers.2.weight",
        "image_newline",
        "view_seperator",
        "language.model.layers.0.mlp.gate_proj.weight",
        "language.model.layers.1.mlp.gate.weight",
        "language.model.layers.1.mlp.experts.3.gate_proj.weight",
        "language.model.layers.1.mlp.shared_experts.down_proj.weight",
        "language.lm_head.weight",
    ):
        assert name in names, name


@pytest.mark.parametrize("family", FAMILIES)
def test_groups_cover_every_parameter(loaded, family):
    lm = loaded[family]
    groups = lm.adapter.parameter_groups(lm.model)
    named = {n: g for g, ps in groups.items() for n, _ in ps}
    assert sorted(named) == sorted(n for n, _ in lm.model.named_parameters())
    layers = lm.model.config.language_config["num_hidden_layers"]
    moe = [f"language.model.layers.{i}" for i in range(1, layers)]  # first_k_dense_replace 1
    assert {n for n, g in named.items() if g == "router"} == {f"{p}.mlp.gate.weight" for p in moe}
    assert {n for n, g in named.items() if g == "experts"} == {
        f"{p}.mlp.experts.{w}" for p in moe for w in ("gate_up_proj", "down_proj")
    }
    assert {n for n, g in named.items() if g == "connector"} == {
        "image_newline",
        "view_seperator",
        *(f"projector.layers.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")),
    }
    assert all(g == "vision" for n, g in named.items() if n.startswith("vision."))
    assert named["language.model.layers.1.mlp.shared_experts.up_proj.weight"] == "language"
    assert named["language.model.layers.0.mlp.up_proj.weight"] == "language"
    assert named["language.lm_head.weight"] == "language"
    assert [n for n, _ in lm.adapter.routers(lm.model)] == [f"{p}.mlp.gate" for p in moe]


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets(loaded, family):
    lm = loaded[family]
    modules, parameters = lm.adapter.lora_targets(lm.model, ["vision", "connector", "language", "experts"])
    leaves = {lm.adapter.module_group(m): set() for m in modules}
    for m in modules:
        leaves[lm.adapter.module_group(m)].add(m.rsplit(".", 1)[1])
    assert leaves["vision"] == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert {m for m in modules if lm.adapter.module_group(m) == "connector"} == {
        "projector.layers.0",
        "projector.layers.2",
    }
    attention = (
        {"q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"}  # -small: no query compression
        if family == "deepseek_vl2_mla"
        else {"q_proj", "k_proj", "v_proj", "o_proj"}
    )
    assert leaves["language"] == attention | {"gate_proj", "up_proj", "down_proj"}
    assert "language.model.layers.1.mlp.shared_experts.gate_proj" in modules
    # the router is a bare weight: trained fully or frozen, never a LoRA target
    assert not any(lm.adapter.module_group(m) == "router" for m in modules)
    assert sorted(parameters) == sorted(
        f"language.model.layers.{i}.mlp.experts.{w}"
        for i in range(1, lm.model.config.language_config["num_hidden_layers"])
        for w in ("gate_up_proj", "down_proj")
    )


def test_the_image_placeholder_is_never_sampled(loaded):
    adapter = loaded["deepseek_vl2"].adapter
    tok = adapter.tokenizer
    vocab = loaded["deepseek_vl2"].model.config.text_config.vocab_size
    blocked = adapter.blocked_token_ids(vocab)
    image = tok.convert_tokens_to_ids("<image>")
    assert image == loaded["deepseek_vl2"].model.config.image_token_id
    assert image in blocked
    assert set(range(len(tok), vocab)) <= set(blocked)
    # the answer's own tokens stay allowed: end of sentence and the grounding tokens
    for allowed in ("<｜end▁of▁sentence｜>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"):
        assert tok.convert_tokens_to_ids(allowed) not in blocked
    # a target that writes the placeholder gets it as text, not as an image token
    assert image not in adapter.response_ids("see <image> here").tolist()
    assert adapter.response_ids("3")[-1] == tok.convert_tokens_to_ids("<｜end▁of▁sentence｜>")


def test_fixed_tiles_refuse_the_pixel_budget(loaded):
    with pytest.raises(ValueError, match="do not apply to deepseek_vl2: it cuts every image into tiles"):
        DeepseekVL2Adapter(loaded["deepseek_vl2"].processor, max_pixels=1000)


def test_model_image_size_is_the_image_inside_its_best_tiling(loaded):
    adapter = loaded["deepseek_vl2"].adapter
    # 300x180 tiles as 3 x 2 (336 x 224 keeps all 54000 px and wastes least); the image is wider
    # (1.67 against 1.5), so its width fills 336 and its height is round(180 / 300 * 336) = 202.
    assert adapter.model_image_size((300, 180)) == (336, 202)
    assert adapter.model_image_size((180, 300)) == (202, 336)
    assert adapter.model_image_size((200, 300)) == (224, 336)  # same aspect ratio as 2 x 3 tiles


# ---- vision cache -------------------------------------------------------------------------------


def test_the_vision_cache_holds_the_laid_out_image_tokens(loaded, images):
    lm = loaded["deepseek_vl2"]
    enc = lm.adapter.encode(make_sample([images["small"]]), PLAIN)
    assert enc.vision["images_spatial_crop"].tolist() == [[1, 1]]
    cache = lm.adapter.vision_cache(lm.model, enc.vision)
    hidden = lm.model.config.language_config["hidden_size"]
    # 112x112: 4*5 + 1 + 4*5 = 41 tokens, newlines and the view separator included
    assert cache.output.pooler_output.shape == (41, hidden)
    assert torch.equal(cache.output.pooler_output[4], lm.model.image_newline)
    assert torch.equal(cache.output.pooler_output[20], lm.model.view_seperator)
    batch = collate([enc], lm.adapter.tokenizer.pad_token_id)
    with torch.no_grad():
        ref = lm.model(**batch).logits
        cached = lm.model(**lm.adapter.cached_inputs(lm.model, batch, cache)).logits
    torch.testing.assert_close(cached, ref)


# ---- routing replay -----------------------------------------------------------------------------


def test_route_weights_are_the_softmax_routers_unrenormalised_and_scaled(loaded):
    adapter = loaded["deepseek_vl2"].adapter
    router = SimpleNamespace(routed_scaling_factor=2.0)
    # softmax(log [1, 2, 3, 4]) = [0.1, 0.2, 0.3, 0.4]; experts 3 and 1 -> [0.4, 0.2] * 2
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).log()
    weights = adapter.route_weights(router, logits, torch.tensor([[3, 1]]))
    torch.testing.assert_close(weights, torch.tensor([[0.8, 0.4]]))


@pytest.mark.parametrize(("norm", "expected"), [(True, [1.5, 1.0]), (False, [1.875, 1.25])])
def test_route_weights_of_the_v3_routers_are_sigmoid_scores(loaded, norm, expected):
    adapter = loaded["deepseek_vl2_mla"].adapter
    router = SimpleNamespace(
        routed_scaling_factor=2.5, norm_topk_prob=norm, e_score_correction_bias=torch.tensor([9.0, 0.0])
    )
    # sigmoid([0, ln 3]) = [0.5, 0.75]; experts (1, 0) -> [0.75, 0.5], renormalised [0.6, 0.4]; x 2.5.
    # The correction bias only selects: it changes nothing here.
    logits = torch.tensor([[0.0, math.log(3.0)]])
    weights = adapter.route_weights(router, logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(weights, torch.tensor([expected]))


@pytest.mark.parametrize("family", FAMILIES)
def test_replaying_the_routers_own_choice_gives_their_own_weights(loaded, family):
    lm = loaded[family]
    (_, router), *_ = lm.adapter.routers(lm.model)
    hidden = torch.randn(
        5, lm.model.config.language_config["hidden_size"], generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        logits, weights, indices = router(hidden)
    torch.testing.assert_close(lm.adapter.route_weights(router, logits, indices), weights)


# ---- boxes --------------------------------------------------------------------------------------


def test_the_999_convention_by_hand():
    to_px, from_px = BOX_CONVENTIONS["norm999"]
    # 500 x 333: 40 / 500 * 999 = 79.92 -> 80; 30 / 333 * 999 = 90; 210 -> 419.58 -> 420; 150 -> 450
    assert from_px([40, 30, 210, 150], (500, 333), (500, 333)) == [80, 90, 420, 450]
    torch.testing.assert_close(
        torch.tensor(to_px([80, 90, 420, 450], (500, 333), (500, 333))),
        torch.tensor([80 * 500 / 999, 30.0, 420 * 500 / 999, 150.0], dtype=torch.float32),
        check_dtype=False,
    )
    for box in ([0, 0, 999, 999], [1, 2, 998, 500], [580, 270, 999, 900]):
        assert from_px(to_px(box, (724, 1086), None), (724, 1086), None) == box


def test_the_original_readmes_grounding_answer_scores_as_its_demo_draws_it(loaded):
    """DeepSeek-VL2's README: "<image>\\n<|ref|>The giraffe at the back.<|/ref|>." on
    images/visual_grounding_1.jpeg (724 x 1086) answers the box below, which its demo
    (serve/app_modules/utils.py) draws at int(v / 999 * size): (420, 293, 724, 978)."""
    adapter = loaded["deepseek_vl2"].adapter
    answer = "<|ref|>The giraffe at the back.<|/ref|><|det|>[[580, 270, 999, 900]]<|/det|>"
    assert parse_boxes(answer) == [([580.0, 270.0, 999.0, 900.0], "The giraffe at the back.")]
    size = (724, 1086)
    drawn = [int(580 / 999 * 724), int(270 / 999 * 1086), int(999 / 999 * 724), int(900 / 999 * 1086)]
    assert drawn == [420, 293, 724, 978]
    fields = {
        "answer": [[{"bbox": drawn, "label": "The giraffe at the back."}]],
        "box_convention": [adapter.box_convention],
        "image_size": [list(size)],
        "model_image_size": [list(adapter.model_image_size(size))],
    }
    # the demo's int() truncation moves each side by < 1 px of a 304 x 685 box
    assert REWARDS["iou"]([answer], **fields)[0] > 0.99
    assert REWARDS["ovd_map50"]([answer], **fields)[0] == pytest.approx(1.0)
    assert REWARDS["iou"]([answer], **{**fields, "box_convention": ["pixels"]})[0] < 0.5
    # and vlrl writes that truth back in the family's frame for SFT targets
    # (420 / 724 * 999 = 579.5, 293 / 1086 * 999 = 269.5, 999, 978 / 1086 * 999 = 899.7)
    assert adapter.box_from_pixels(drawn, size) == [580, 270, 999, 900]
