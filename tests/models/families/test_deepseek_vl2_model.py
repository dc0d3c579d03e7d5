"""DeepSeek-VL2's model against independent arithmetic: the vision tower against the ViT maths
written out (fed from an original-layout state dict through the checkpoint conversion), the
projector's 2x2 merge and MLP by hand, the 2-D token layout against a hand-built sequence, the
image-token count against its formula, the MoE layers against the original gating formula
(modeling_deepseek.py `MoEGate`), the original checkpoint names (listed by hand from the original
modules) loading with nothing missing and saving back, the real configs' parameter counts against
the published totals, and every unsupported variant failing at load, naming its field."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForImageTextToText, DynamicCache

import vlrl  # noqa: F401  (registers deepseek_vl_v2 with transformers' Auto classes)
from vlrl.models.deepseek_vl2 import DeepseekVLV2Config, DeepseekVLV2ForCausalLM
from vlrl.models.deepseek_vl2.modeling import downsample_tokens, layout_image_tokens
from vlrl.models.deepseek_vl2.processing import image_token_count, tokens_per_side
from vlrl.models.export import export_weights

# ---- small configs in the original layout ---------------------------------------------------------

WIDTH, VIT_LAYERS, VIT_HEADS, MLP_RATIO, PATCH, IMAGE = 16, 2, 2, 2, 7, 21  # 3x3 patches per tile
N_EMBED, VOCAB, IMAGE_ID = 32, 64, 5
HEADS, EXPERTS, TOP_K, MOE_I, DENSE_I = 4, 4, 2, 16, 48
KV_RANK, ROPE, NOPE, V_DIM = 16, 8, 8, 8


def original_config(variant: str) -> dict:
    """A config.json as the original code writes it, for "mha" (tiny's attention), "mla" (small's)
    or "noaux" (base's sigmoid routing with e_score_correction_bias)."""
    lang = {
        "vocab_size": VOCAB,
        "hidden_size": N_EMBED,
        "intermediate_size": DENSE_I,
        "moe_intermediate_size": MOE_I,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "n_routed_experts": EXPERTS,
        "n_shared_experts": 1,
        "num_experts_per_tok": TOP_K,
        "first_k_dense_replace": 1,
        "topk_method": "greedy",
        "routed_scaling_factor": 1.5,
        "use_mla": variant != "mha",
        "kv_lora_rank": KV_RANK,
        "q_lora_rank": None,
        "qk_rope_head_dim": ROPE,
        "qk_nope_head_dim": NOPE,
        "v_head_dim": V_DIM,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "model_type": "deepseek_v2",
    }
    if variant == "noaux":
        lang |= {
            "topk_method": "noaux_tc",
            "scoring_func": "sigmoid",
            "norm_topk_prob": True,
            "n_group": 1,
            "topk_group": 1,
        }
    return {
        "model_type": "deepseek_vl_v2",
        "tile_tag": "2D",
        "global_view_pos": "head",
        "candidate_resolutions": [[IMAGE, IMAGE], [IMAGE, 2 * IMAGE], [2 * IMAGE, IMAGE]],
        "image_token_id": IMAGE_ID,
        "vision_config": {
            "model_type": "vision",
            "model_name": "siglip_so400m_patch14_384",
            "image_size": IMAGE,
            "patch_size": PATCH,
            "width": WIDTH,
            "layers": VIT_LAYERS,
            "heads": VIT_HEADS,
            "mlp_ratio": MLP_RATIO,
        },
        "projector_config": {"model_type": "mlp_projector", "input_dim": WIDTH, "n_embed": N_EMBED},
        "language_config": lang,
    }


def original_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    """Every tensor of the original model, named as its modules name them: siglip_vit.py's
    `VisionTransformer` (timm `PatchEmbed`, `pos_embed` [1, N, D], `Block`s with `norm1`,
    `attn.qkv` / `attn.proj`, `norm2`, `mlp.fc1` / `mlp.fc2`, final `norm`, and the `attn_pool`
    head `AttentionPoolLatent` builds for global_pool "map"), modeling_deepseek_vl_v2.py's
    `MlpProjector` (`layers` 0 and 2), `image_newline` / `view_seperator`, and modeling_deepseek.py's
    `DeepseekV2ForCausalLM` under `language` (MLA: `q_proj` (q_lora_rank null),
    `kv_a_proj_with_mqa`, `kv_a_layernorm`, `kv_b_proj`, `o_proj`; MHA: LlamaAttention's q/k/v/o;
    `MoEGate.weight` (+ `e_score_correction_bias` for noaux_tc), per-expert MLPs, shared experts).
    The same names are listed, for the released deepseek-vl2, by MindSpeed-MM's checkpoint
    converter (checkpoint/vlm_model, `create_deepseek_vl_ops`) and the draft transformers port's
    conversion script (ORIGINAL_TO_CONVERTED_KEY_MAPPING)."""
    d, f, grid = WIDTH, WIDTH * MLP_RATIO, (IMAGE // PATCH) ** 2
    shapes = {
        "vision.patch_embed.proj.weight": (d, 3, PATCH, PATCH),
        "vision.patch_embed.proj.bias": (d,),
        "vision.pos_embed": (1, grid, d),
        "vision.norm.weight": (d,),
        "vision.norm.bias": (d,),
        "vision.attn_pool.latent": (1, 1, d),
        "vision.attn_pool.q.weight": (d, d),
        "vision.attn_pool.q.bias": (d,),
        "vision.attn_pool.kv.weight": (2 * d, d),
        "vision.attn_pool.kv.bias": (2 * d,),
        "vision.attn_pool.proj.weight": (d, d),
        "vision.attn_pool.proj.bias": (d,),
        "vision.attn_pool.norm.weight": (d,),
        "vision.attn_pool.norm.bias": (d,),
        "vision.attn_pool.mlp.fc1.weight": (f, d),
        "vision.attn_pool.mlp.fc1.bias": (f,),
        "vision.attn_pool.mlp.fc2.weight": (d, f),
        "vision.attn_pool.mlp.fc2.bias": (d,),
        "projector.layers.0.weight": (N_EMBED, 4 * d),
        "projector.layers.0.bias": (N_EMBED,),
        "projector.layers.2.weight": (N_EMBED, N_EMBED),
        "projector.layers.2.bias": (N_EMBED,),
        "image_newline": (N_EMBED,),
        "view_seperator": (N_EMBED,),
        "language.model.embed_tokens.weight": (VOCAB, N_EMBED),
        "language.model.norm.weight": (N_EMBED,),
        "language.lm_head.weight": (VOCAB, N_EMBED),
    }
    for i in range(VIT_LAYERS):
        b = f"vision.blocks.{i}."
        shapes |= {
            b + "norm1.weight": (d,),
            b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d),
            b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d),
            b + "attn.proj.bias": (d,),
            b + "norm2.weight": (d,),
            b + "norm2.bias": (d,),
            b + "mlp.fc1.weight": (f, d),
            b + "mlp.fc1.bias": (f,),
            b + "mlp.fc2.weight": (d, f),
            b + "mlp.fc2.bias": (d,),
        }
    h = N_EMBED
    for i in range(2):
        b = f"language.model.layers.{i}."
        shapes |= {b + "input_layernorm.weight": (h,), b + "post_attention_layernorm.weight": (h,)}
        if variant == "mha":
            shapes |= {b + f"self_attn.{p}_proj.weight": (h, h) for p in "qkvo"}
        else:
            shapes |= {
                b + "self_attn.q_proj.weight": (HEADS * (NOPE + ROPE), h),
                b + "self_attn.kv_a_proj_with_mqa.weight": (KV_RANK + ROPE, h),
                b + "self_attn.kv_a_layernorm.weight": (KV_RANK,),
                b + "self_attn.kv_b_proj.weight": (HEADS * (NOPE + V_DIM), KV_RANK),
                b + "self_attn.o_proj.weight": (h, HEADS * V_DIM),
            }
        if i == 0:  # first_k_dense_replace 1
            shapes |= {b + f"mlp.{p}_proj.weight": (DENSE_I, h) for p in ("gate", "up")}
            shapes[b + "mlp.down_proj.weight"] = (h, DENSE_I)
            continue
        shapes[b + "mlp.gate.weight"] = (EXPERTS, h)
        if variant == "noaux":
            shapes[b + "mlp.gate.e_score_correction_bias"] = (EXPERTS,)
        for e in [*(f"experts.{e}" for e in range(EXPERTS)), "shared_experts"]:
            shapes |= {b + f"mlp.{e}.{p}_proj.weight": (MOE_I, h) for p in ("gate", "up")}
            shapes[b + f"mlp.{e}.down_proj.weight"] = (h, MOE_I)
    return shapes


def original_checkpoint(tmp_path, variant: str):
    """An original-layout checkpoint (random tensors) on disk: (its folder, its state dict)."""
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) * 0.3 for k, s in original_shapes(variant).items()}
    folder = tmp_path / variant
    folder.mkdir()
    save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(original_config(variant)))
    return folder, state


@pytest.fixture(scope="module", params=["mha", "mla", "noaux"])
def loaded(request, tmp_path_factory):
    folder, state = original_checkpoint(tmp_path_factory.mktemp("dsvl2"), request.param)
    model, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    return request.param, folder, state, model.eval(), info


# ---- checkpoint names ----------------------------------------------------------------------------


def test_original_names_load_with_nothing_missing_and_save_back(loaded, tmp_path):
    variant, _, state, model, info = loaded
    assert type(model) is DeepseekVLV2ForCausalLM
    assert {k: v for k, v in info.items() if v} == {}
    model.save_pretrained(tmp_path / "out")
    saved = load_file(tmp_path / "out" / "model.safetensors")
    expected = {k for k in state if not k.startswith("vision.attn_pool.")}
    assert set(saved) == expected
    assert all(torch.equal(saved[k], state[k]) for k in expected)
    # What vlrl sends to an inference engine is what save_pretrained writes.
    exported = dict(export_weights(model))
    assert set(exported) == expected
    assert all(torch.equal(exported[k], state[k]) for k in expected)
    # And the config the original code reads: the three sections, no derived text_config.
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["model_type"] == "deepseek_vl_v2"
    assert "text_config" not in written and "vision_tower_config" not in written
    assert written["language_config"]["use_mla"] == (variant != "mha")
    assert written["image_token_id"] == IMAGE_ID


def test_loading_converts_the_fused_and_per_expert_tensors(loaded):
    _, _, state, model, _ = loaded
    ours = model.state_dict()
    q, k, v = state["vision.blocks.1.attn.qkv.weight"].chunk(3)
    assert torch.equal(ours["vision.encoder.layers.1.self_attn.k_proj.weight"], k)
    assert torch.equal(
        ours["vision.encoder.layers.1.self_attn.v_proj.bias"], state["vision.blocks.1.attn.qkv.bias"][32:]
    )
    assert torch.equal(ours["vision.embeddings.position_embedding.weight"], state["vision.pos_embed"][0])
    gate_up = ours["language.model.layers.1.mlp.experts.gate_up_proj"]  # [E, 2I, H]: gate rows, then up
    assert torch.equal(gate_up[3, :MOE_I], state["language.model.layers.1.mlp.experts.3.gate_proj.weight"])
    assert torch.equal(gate_up[3, MOE_I:], state["language.model.layers.1.mlp.experts.3.up_proj.weight"])
    down = ours["language.model.layers.1.mlp.experts.down_proj"]
    assert torch.equal(down[2], state["language.model.layers.1.mlp.experts.2.down_proj.weight"])


# ---- vision tower ----------------------------------------------------------------------------------


def _layer_norm(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * w + b


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def vit_by_hand(state: dict, pixels: torch.Tensor) -> torch.Tensor:
    """siglip_vit.py's `forward_features` written out: patches flattened (channel, row, column) and
    multiplied by the flattened conv kernel, + pos_embed, pre-LN blocks with softmax(q k^T / sqrt(d)) v
    from the fused qkv, tanh-GELU MLP, final LayerNorm. pixels [n, 3, S, S] -> [n, N, D]."""
    n = pixels.shape[0]
    g = IMAGE // PATCH
    patches = pixels[:, :, : g * PATCH, : g * PATCH].reshape(n, 3, g, PATCH, g, PATCH)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, 3 * PATCH * PATCH)
    w = state["vision.patch_embed.proj.weight"].reshape(WIDTH, -1)
    x = patches @ w.T + state["vision.patch_embed.proj.bias"] + state["vision.pos_embed"]
    hd = WIDTH // VIT_HEADS
    for i in range(VIT_LAYERS):
        block = {k.removeprefix(f"vision.blocks.{i}."): t for k, t in state.items()}
        h = _layer_norm(x, block["norm1.weight"], block["norm1.bias"])
        qkv = h @ block["attn.qkv.weight"].T + block["attn.qkv.bias"]
        q, k, v = (t.reshape(n, -1, VIT_HEADS, hd).transpose(1, 2) for t in qkv.split(WIDTH, -1))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
        x = (
            x
            + att.transpose(1, 2).reshape(n, -1, WIDTH) @ block["attn.proj.weight"].T
            + block["attn.proj.bias"]
        )
        h = _layer_norm(x, block["norm2.weight"], block["norm2.bias"])
        h = (
            _gelu_tanh(h @ block["mlp.fc1.weight"].T + block["mlp.fc1.bias"]) @ block["mlp.fc2.weight"].T
            + block["mlp.fc2.bias"]
        )
        x = x + h
    return _layer_norm(x, state["vision.norm.weight"], state["vision.norm.bias"])


def test_vision_tower_is_the_vit_maths(loaded):
    _, _, state, model, _ = loaded
    pixels = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.vision(pixels).last_hidden_state
    torch.testing.assert_close(ours, vit_by_hand(state, pixels), rtol=1e-4, atol=1e-4)


# ---- projector and layout ---------------------------------------------------------------------------


def test_downsample_pads_3x3_to_4x4_and_concatenates_neighbours_channel_major():
    # Token (i, j) of a 3x3 grid, channel c, holds 100c + 10i + j + 1 (0 is the padding).
    x = torch.tensor(
        [[[100 * c + 10 * i + j + 1 for c in range(2)] for i in range(3) for j in range(3)]]
    ).float()
    out = downsample_tokens(x, 2)
    assert out.shape == (1, 4, 8)

    def cell(c, i, j):
        return 100 * c + 10 * i + j + 1 if i < 3 and j < 3 else 0

    for bi in range(2):
        for bj in range(2):
            expected = [
                cell(c, 2 * bi + di, 2 * bj + dj) for c in range(2) for di in range(2) for dj in range(2)
            ]
            assert out[0, 2 * bi + bj].tolist() == expected


def test_projector_is_the_merge_then_linear_gelu_linear(loaded):
    _, _, state, model, _ = loaded
    features = torch.randn(2, 9, WIDTH, generator=torch.Generator().manual_seed(2))
    merged = downsample_tokens(features, 2)
    hidden = merged @ state["projector.layers.0.weight"].T + state["projector.layers.0.bias"]
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # exact GELU (nn.GELU())
    expected = hidden @ state["projector.layers.2.weight"].T + state["projector.layers.2.bias"]
    with torch.no_grad():
        torch.testing.assert_close(model.projector(features), expected)


def hand_layout(crops, head=True):
    """The expected sequence of marker values: tile t's token (r, c) of an h x w grid is 1000t + 10r + c,
    newline -1, separator -2."""
    out, t = [], 0
    side = 2
    for tw, th in crops:
        glob = [v for r in range(side) for v in [1000 * t + 10 * r + c for c in range(side)] + [-1]]
        local = []
        for row in range(th * side):
            for col in range(tw * side):
                tile = t + 1 + (row // side) * tw + col // side
                local.append(1000 * tile + 10 * (row % side) + col % side)
            local.append(-1)
        out += glob + [-2] + local if head else local + [-2] + glob
        t += 1 + tw * th
    return out


@pytest.mark.parametrize("head", [True, False])
def test_layout_is_global_rows_separator_then_stitched_local_rows(head):
    crops = [(3, 2), (1, 1)]  # 3 tiles across and 2 down, then a single local tile
    n_tiles = sum(1 + w * h for w, h in crops)
    tiles = torch.tensor(
        [[[1000 * t + 10 * r + c] for r in range(2) for c in range(2)] for t in range(n_tiles)]
    ).float()
    seq = layout_image_tokens(
        tiles, crops, torch.tensor([-1.0]), torch.tensor([-2.0]), "head" if head else "tail"
    )
    assert seq[:, 0].tolist() == hand_layout(crops, head)


@pytest.mark.parametrize("tw, th", [(1, 1), (2, 1), (1, 3), (3, 3), (9, 1)])
def test_image_token_count_is_the_formula(tw, th):
    h = math.ceil((384 / 14) / 2)  # 27 patches -> 14 after the 2x2 merge (27 padded to 28)
    assert tokens_per_side(384, 14, 2) == h
    assert image_token_count(h, (tw, th)) == h * (h + 1) + 1 + (th * h) * (tw * h + 1)
    assert image_token_count(h, (1, 1)) == 421


def test_image_features_give_each_image_its_count_in_order(loaded):
    _, _, _, model, _ = loaded
    crops = torch.tensor([[2, 1], [1, 1]])
    pixels = torch.randn(3 + 2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        both = model.get_image_features(pixels, crops).pooler_output
        first = model.get_image_features(pixels[:3], crops[:1]).pooler_output
        second = model.get_image_features(pixels[3:], crops[1:]).pooler_output
    # 3x3 patches -> 2x2 merged: 2*3 + 1 + (1*2)*(2*2 + 1) = 17 and 2*3 + 1 + 2*3 = 13 tokens.
    assert first.shape == (17, N_EMBED) and second.shape == (13, N_EMBED)
    assert image_token_count(tokens_per_side(IMAGE, PATCH, 2), (2, 1)) == 17
    torch.testing.assert_close(both, torch.cat([first, second]))
    torch.testing.assert_close(first[2], model.image_newline.detach())
    torch.testing.assert_close(first[6], model.view_seperator.detach())


# ---- forward --------------------------------------------------------------------------------------


def _prompt(n_tokens):
    return [2, 3] + [IMAGE_ID] * n_tokens + [4, 6]


def test_forward_places_features_and_cached_features_give_the_same_logits(loaded):
    _, _, _, model, _ = loaded
    crops = torch.tensor([[2, 1], [1, 1]])
    pixels = torch.randn(5, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(4))
    # Two prompts batched as vlrl batches them: their vision tensors concatenated along dim 0.
    ids = torch.tensor([_prompt(17), _prompt(13) + [8] * 4])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, images_spatial_crop=crops).logits
        feats = model.get_image_features(pixels, crops)
        cached = model(input_ids=ids, mm_encoder_outputs={"image": feats}).logits
        alone = model(input_ids=ids[1:], pixel_values=pixels[3:], images_spatial_crop=crops[1:]).logits
        embeds = model.get_input_embeddings()(ids[:1])
        embeds[0, 2:19] = feats.pooler_output[:17]
        by_hand = model(inputs_embeds=embeds).logits
    assert torch.equal(out, cached)
    torch.testing.assert_close(out[1:], alone)
    torch.testing.assert_close(out[:1], by_hand)


def test_generate_sees_the_pixels_once_and_matches_a_cached_greedy_loop(loaded):
    _, _, _, model, _ = loaded
    crops = torch.tensor([[1, 1]])
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(7))
    ids = torch.tensor([_prompt(13)])
    with torch.no_grad():
        generated = model.generate(
            input_ids=ids, pixel_values=pixels, images_spatial_crop=crops, max_new_tokens=4, do_sample=False
        )[0, ids.shape[1] :].tolist()
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=ids, pixel_values=pixels, images_spatial_crop=crops, cache=cache).logits
        loop = []
        for _ in range(4):
            loop.append(int(logits[0, -1].argmax()))
            logits = model(input_ids=torch.tensor([[loop[-1]]]), cache=cache).logits
    assert generated == loop
    step = model.prepare_inputs_for_generation(
        ids, pixel_values=pixels, images_spatial_crop=crops, cache=cache, is_first_iteration=False
    )
    assert "pixel_values" not in step and "images_spatial_crop" not in step


def test_image_token_count_mismatch_is_a_clear_error(loaded):
    _, _, _, model, _ = loaded
    pixels = torch.zeros(2, 3, IMAGE, IMAGE)
    with pytest.raises(ValueError, match="12 image tokens .* 13 features"):
        model(
            input_ids=torch.tensor([_prompt(12)]),
            pixel_values=pixels,
            images_spatial_crop=torch.tensor([[1, 1]]),
        )
    with pytest.raises(ValueError, match="do not hold the 3 tiles"):
        model.get_image_features(pixels, torch.tensor([[2, 1]]))
    with pytest.raises(ValueError, match="images need input_ids"):
        model(
            inputs_embeds=torch.zeros(1, 3, N_EMBED),
            pixel_values=pixels,
            images_spatial_crop=torch.tensor([[1, 1]]),
        )


def test_a_batch_without_images_is_the_text_only_pass(loaded):
    _, _, _, model, _ = loaded
    ids = torch.tensor([[2, 3, 4, 6]])
    with torch.no_grad():
        empty = model(
            input_ids=ids, pixel_values=torch.zeros(0, 3, IMAGE, IMAGE), images_spatial_crop=torch.zeros(0, 2)
        )
        assert torch.equal(empty.logits, model(input_ids=ids).logits)


# ---- attention against the original's ------------------------------------------------------------------


def _rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def _rotate(x, positions, interleaved):
    """RoPE as modeling_deepseek.py applies it (theta 10000 over x's last dim d): MLA's
    `apply_rotary_pos_emb` first regroups the dims (x0, x2, ..., x1, x3, ...), then both forms
    rotate halves: [a, b] -> [a cos - b sin, b cos + a sin] with angle position / 10000^(2i/d)."""
    d = x.shape[-1]
    if interleaved:
        x = torch.cat([x[..., 0::2], x[..., 1::2]], -1)
    angle = positions[:, None].float() / 10000 ** (torch.arange(0, d, 2).float() / d)  # [T, d/2]
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


def attention_by_hand(state, variant, x):
    """Layer 0's attention block of the original for one sequence x [T, H]: LlamaAttention for MHA
    (tiny), `DeepseekV2Attention` (MLA, q_lora_rank null) written in its unabsorbed form
    otherwise; causal softmax(q k^T * scale) v, then o_proj. Returns x + attention(norm(x))."""
    b = "language.model.layers.0."
    h = _rms(x, state[b + "input_layernorm.weight"])
    t = x.shape[0]
    pos = torch.arange(t)
    if variant == "mha":
        hd = N_EMBED // HEADS
        q, k, v = (
            (h @ state[b + f"self_attn.{p}_proj.weight"].T).reshape(t, HEADS, hd).transpose(0, 1)
            for p in "qkv"
        )
        q, k = _rotate(q, pos, False), _rotate(k, pos, False)
        scale = hd**-0.5
    else:
        q = (h @ state[b + "self_attn.q_proj.weight"].T).reshape(t, HEADS, NOPE + ROPE).transpose(0, 1)
        kv_a = h @ state[b + "self_attn.kv_a_proj_with_mqa.weight"].T
        latent = _rms(kv_a[:, :KV_RANK], state[b + "self_attn.kv_a_layernorm.weight"])
        kv = (
            (latent @ state[b + "self_attn.kv_b_proj.weight"].T)
            .reshape(t, HEADS, NOPE + V_DIM)
            .transpose(0, 1)
        )
        k_pe = _rotate(kv_a[:, KV_RANK:], pos, True).expand(HEADS, t, ROPE)
        q = torch.cat([q[..., :NOPE], _rotate(q[..., NOPE:], pos, True)], -1)
        k = torch.cat([kv[..., :NOPE], k_pe], -1)
        v = kv[..., NOPE:]
        scale = (NOPE + ROPE) ** -0.5
    scores = (q @ k.transpose(-1, -2)) * scale + torch.full((t, t), float("-inf")).triu(1)
    out = (torch.softmax(scores, -1) @ v).transpose(0, 1).reshape(t, -1)
    return x + out @ state[b + "self_attn.o_proj.weight"].T


def test_first_decoder_layer_is_the_original_attention_and_dense_mlp(loaded):
    """Layer 0 (attention, then the dense MLP) against the original's maths, which pins the RoPE
    layout: MLA's interleaved rope dims (DeepseekV2's complex rotation, DeepseekV3's
    `rope_interleave`) and MHA's half-split over the whole head."""
    variant, _, state, model, _ = loaded
    x = torch.randn(1, 6, N_EMBED, generator=torch.Generator().manual_seed(6))
    after_attention = attention_by_hand(state, variant, x[0])
    b = "language.model.layers.0."
    expected = after_attention + _expert(
        state, b + "mlp.", _rms(after_attention, state[b + "post_attention_layernorm.weight"])
    )
    with torch.no_grad():
        hidden = model.language.model(inputs_embeds=x, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(hidden[0], expected, rtol=1e-4, atol=1e-4)


# ---- MoE layers against the original gating formula ------------------------------------------------------


def _expert(state, prefix, x):
    """DeepseekV2MLP: down(silu(gate x) * up x)."""
    gate = x @ state[prefix + "gate_proj.weight"].T
    return (F.silu(gate) * (x @ state[prefix + "up_proj.weight"].T)) @ state[prefix + "down_proj.weight"].T


def moe_by_hand(state, variant, x):
    """modeling_deepseek.py `MoEGate` + `DeepseekV2MoE` for one layer, token by token: greedy softmax
    top-k without renormalisation (tiny, small), or noaux_tc (base: sigmoid scores, top-k of
    score + e_score_correction_bias over one group, weights = scores renormalised); times
    routed_scaling_factor 1.5; plus the shared experts."""
    b = "language.model.layers.1.mlp."
    logits = x @ state[b + "gate.weight"].T
    out = []
    for t in range(x.shape[0]):
        if variant == "noaux":
            scores = torch.sigmoid(logits[t])
            chosen = torch.topk(scores + state[b + "gate.e_score_correction_bias"], TOP_K).indices
            weights = scores[chosen] / scores[chosen].sum()
        else:
            scores = torch.softmax(logits[t], -1)
            chosen = torch.topk(scores, TOP_K).indices
            weights = scores[chosen]
        y = sum(
            1.5 * w * _expert(state, f"{b}experts.{int(e)}.", x[t])
            for w, e in zip(weights, chosen, strict=True)
        )
        out.append(y + _expert(state, b + "shared_experts.", x[t]))
    return torch.stack(out)


def test_moe_layer_is_the_original_gating_formula(loaded):
    variant, _, state, model, _ = loaded
    x = torch.randn(1, 7, N_EMBED, generator=torch.Generator().manual_seed(5))
    layers = model.language.model.layers
    with torch.no_grad():
        torch.testing.assert_close(
            layers[1].mlp(x)[0], moe_by_hand(state, variant, x[0]), rtol=1e-5, atol=1e-5
        )
        # first_k_dense_replace 1: layer 0 is one dense MLP.
        dense = _expert(state, "language.model.layers.0.mlp.", x[0])
        torch.testing.assert_close(layers[0].mlp(x)[0], dense, rtol=1e-5, atol=1e-5)


# ---- real configs ------------------------------------------------------------------------------------------

SO400M = {
    "layers": 27,
    "mlp_ratio": 3.7362,
    "model_name": "siglip_so400m_patch14_384",
    "patch_size": 14,
    "width": 1152,
}
# deepseek-ai/deepseek-vl2-tiny (DeepSeek-OCR ships the same language model: hidden 1280, 12
# layers, 10 heads, MHA, 64 experts top-6, 2 shared, vocab 129280).
TINY = {
    "vision_config": SO400M,
    "projector_config": {"n_embed": 1280},
    "language_config": {
        "vocab_size": 129280, "hidden_size": 1280, "intermediate_size": 6848, "moe_intermediate_size": 896,
        "num_hidden_layers": 12, "num_attention_heads": 10, "num_key_value_heads": 10, "n_routed_experts": 64,
        "num_experts_per_tok": 6, "n_shared_experts": 2, "first_k_dense_replace": 1, "use_mla": False,
        "topk_method": "greedy", "n_group": 1, "topk_group": 1, "q_lora_rank": None, "kv_lora_rank": None,
        "qk_nope_head_dim": 0, "qk_rope_head_dim": 0, "v_head_dim": 0, "max_position_embeddings": 4096,
        "bos_token_id": 0, "eos_token_id": 1,
    },
}  # fmt: skip
# deepseek-ai/deepseek-vl2-small: DeepSeek-V2-Lite's language model (MLA, q_lora_rank null).
SMALL = {
    "vision_config": SO400M,
    "projector_config": {"n_embed": 2048},
    "language_config": {
        "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
        "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "n_routed_experts": 64,
        "num_experts_per_tok": 6, "n_shared_experts": 2, "first_k_dense_replace": 1, "kv_lora_rank": 512,
        "q_lora_rank": None, "topk_method": "greedy", "max_position_embeddings": 4096,
    },
}  # fmt: skip
# deepseek-ai/deepseek-vl2 (its config.json, e.g. earl-juanico/rca DeepSeek-VL2/deepseek_vl2/config.json).
BASE = {
    "vision_config": SO400M,
    "projector_config": {"n_embed": 2560},
    "language_config": {
        "bos_token_id": 0, "eos_token_id": 1, "first_k_dense_replace": 1, "hidden_size": 2560,
        "intermediate_size": 12288, "lm_head": False, "max_position_embeddings": 4096,
        "moe_intermediate_size": 1536, "n_group": 1, "n_routed_experts": 72, "n_shared_experts": 2,
        "norm_topk_prob": True, "num_experts_per_tok": 6, "q_lora_rank": None, "rm_head": False,
        "routed_scaling_factor": 2.0, "scoring_func": "sigmoid", "topk_group": 1, "topk_method": "noaux_tc",
        "vocab_size": 129280,
    },
}  # fmt: skip


@pytest.mark.parametrize(
    "config, total, published_total, activated, published_activated, image_id",
    [
        (TINY, 3_355_263_088, 3.37, 994_656_368, 1.0, 128815),
        (SMALL, 16_133_111_152, 16.1, 2_878_061_936, 2.8, 100015),
        (BASE, 27_464_893_808, 27.5, 4_555_474_288, 4.5, 128815),
    ],
    ids=["tiny", "small", "base"],
)
def test_real_configs_have_the_published_parameter_counts(
    config, total, published_total, activated, published_activated, image_id
):
    """The real architectures on the meta device, counted. Published (model cards): tiny 3.37B in all
    / 1.0B activated, small 16.1B / 2.8B, base 27.5B / 4.5B. The published totals count the
    checkpoint's unused attention-pool head too (4 d^2 + 2 d f + 11 d + f = 15.2M for SO400M); the
    activated counts leave out the (E - k) / E of routed expert weights a token does not use and the
    input embedding (a lookup): 0.995B, 2.878B and 4.555B, the language models' shares of which are
    the paper's 0.57B, 2.4B and 4.1B."""
    cfg = DeepseekVLV2Config(**config)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) == total
    d, f = 1152, int(1152 * 3.7362)
    attn_pool = 4 * d * d + 2 * d * f + 11 * d + f
    assert round((total + attn_pool) / 1e9, 2 if published_total < 10 else 1) == published_total
    lang = cfg.language_config
    experts = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
    unused = experts * (lang["n_routed_experts"] - lang["num_experts_per_tok"]) // lang["n_routed_experts"]
    assert total - unused - lang["vocab_size"] * lang["hidden_size"] == activated
    assert activated / 1e9 == pytest.approx(published_activated, rel=0.03)
    assert cfg.image_token_id == image_id


def test_real_config_round_trips_through_autoconfig(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_vl_v2", **BASE}))
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert type(cfg) is DeepseekVLV2Config and type(cfg.text_config).__name__ == "DeepseekV3Config"
    assert cfg.get_text_config() is cfg.text_config
    assert cfg.language_config["qk_rope_head_dim"] == 64  # the original default, filled in
    cfg.save_pretrained(tmp_path / "out")
    again = AutoConfig.from_pretrained(tmp_path / "out")
    assert again.language_config == cfg.language_config and again.vision_config == cfg.vision_config


# ---- unsupported variants -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, change, field",
    [
        ("language_config", {"topk_method": "xyz"}, "language_config.topk_method 'xyz'"),
        ("language_config", {"scoring_func": "sigmoid"}, "language_config.scoring_func 'sigmoid'"),
        ("language_config", {"norm_topk_prob": True}, "language_config.norm_topk_prob True"),
        ("language_config", {"moe_layer_freq": 2}, "language_config.moe_layer_freq 2"),
        ("language_config", {"n_routed_experts": None}, "language_config.n_routed_experts None"),
        ("language_config", {"rope_scaling": {"type": "yarn", "factor": 4}}, "language_config.rope_scaling"),
        ("language_config", {"tie_word_embeddings": True}, "language_config.tie_word_embeddings True"),
        ("language_config", {"topk_method": "group_limited_greedy"}, "language_config.n_group None"),
        ("language_config", {"use_mla": False, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "n_group": 1, "topk_group": 1}, "language_config.use_mla False"),
        ("projector_config", {"projector_type": "mlp_gelu"}, "projector_config.projector_type 'mlp_gelu'"),
        ("projector_config", {"token_pooling": True}, "projector_config.token_pooling True"),
        ("projector_config", {"input_dim": 8}, "projector_config.input_dim 8"),
        ("projector_config", {"n_embed": 48}, "projector_config.n_embed 48"),
        ("vision_config", {"ignore_head": False}, "vision_config.ignore_head False"),
        ("vision_config", {"class_token": True}, "vision_config.class_token True"),
        (None, {"tile_tag": "1D"}, "tile_tag '1D'"),
        (None, {"global_view_pos": "middle"}, "global_view_pos 'middle'"),
        (None, {"image_token_id": 999}, "image_token_id 999"),
    ],
)  # fmt: skip
def test_unsupported_variant_fails_at_load_naming_the_field(tmp_path, section, change, field):
    config = original_config("mha")
    if section is None:
        config |= change
    else:
        config[section] |= change
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"deepseek_vl_v2 config: {re.escape(field)}.* is not supported"):
        AutoConfig.from_pretrained(tmp_path)


def test_noaux_with_group_masking_fails_naming_topk_group():
    with pytest.raises(
        ValueError, match=r"language_config.topk_group 1 is not supported \(supported: n_group = 2"
    ):
        DeepseekVLV2Config(**{**BASE, "language_config": {**BASE["language_config"], "n_group": 2}})


def test_unknown_vocabulary_needs_an_explicit_image_token_id():
    config = original_config("mha")
    del config["image_token_id"]
    with pytest.raises(ValueError, match="image_token_id None is not supported .*vocab_size 64"):
        DeepseekVLV2Config(**config)
