"""InternVL3.5-MoE (InternVL around a Qwen3-MoE language model, -HF layout): the adapter picked from
the config, the vision cache, the shared prefix, module groups (router, experts), the router rule,
LoRA on the fused experts, save -> load, generation, and the real architecture's parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForImageTextToText, InternVLConfig

from vlrl.config import load_config
from vlrl.data.prompts import TEMPLATES
from vlrl.data.sample import Sample
from vlrl.models.adapters import InternVLAdapter, InternVLMoeAdapter, VisionCache, adapter_for
from vlrl.models.batching import collate
from vlrl.models.loading import load_model
from vlrl.models.logprobs import grouped_response_logprobs, response_logprobs
from vlrl.rollout import HFRolloutBackend, SamplingParams
from vlrl.training.setup import check_model_groups

PLAIN = TEMPLATES["answer_only"]
TWO = "Image 1: <image>\nImage 2: <image>\nWhich image has more circles?"


@pytest.fixture(scope="module")
def lm(tiny_models):
    return load_model(tiny_models["internvl_moe"])


def _sample(images, question="How many shapes?"):
    return Sample(id="s", question=question, answer="1", images=list(images))


def _prompts(adapter, images):
    """A one-image prompt, a longer two-image one, and a text-only one (so batches pad)."""
    return [
        adapter.encode(_sample([images["small"]]), PLAIN),
        adapter.encode(_sample([images["big"], images["small"]], TWO), PLAIN),
        adapter.encode(_sample([], "What is 2 + 3?"), PLAIN),
    ]


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
    enc = lm.adapter.encode(_sample([images["small"], images["big"]], TWO), PLAIN)
    assert enc.vision["pixel_values"].shape == (4, 3, 112, 112)
    assert (enc.tokens["input_ids"] == lm.model.config.image_token_id).sum() == 16 * 4
    assert list(enc.tokens) == ["input_ids", "attention_mask"]
    batch = collate(_prompts(lm.adapter, images), lm.adapter.tokenizer.pad_token_id, padding_side="left")
    pos = lm.adapter.position_ids(lm.model, batch)
    real = batch["attention_mask"][2].bool()
    assert pos.shape == batch["input_ids"].shape and pos[2, real].tolist() == list(range(int(real.sum())))


# ---- the vision cache and the shared prefix ----------------------------------------------------


def test_cached_vision_gives_the_same_logprobs(lm, images):
    a = lm.adapter
    prompts = _prompts(a, images)[:2]
    responses = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    seqs = [p.with_response(r) for p, r in zip(prompts, responses, strict=True)]
    blocked = torch.tensor(a.placeholder_token_ids())
    args = (lm.model, seqs, [3, 2], a.tokenizer.pad_token_id, 1.0, blocked)
    with torch.no_grad():
        plain, _ = response_logprobs(*args)
        cache = VisionCache.concat([a.vision_cache(lm.model, p.vision) for p in prompts])
        cached, _ = response_logprobs(*args, adapter=a, vision=cache)
        # 1 + 3 + 1 tiles of 16 tokens of the language width (64).
        assert cache.output["pooler_output"].shape == (5, 16, 64)
        zeros = VisionCache(type(cache.output)(pooler_output=torch.zeros_like(cache.output["pooler_output"])))
        blind, _ = response_logprobs(*args, adapter=a, vision=zeros)
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    assert (blind - plain).abs().max() > 1e-3  # the cached features do matter


def test_grouped_logprobs_match_full_passes_in_value_and_gradient(lm, images):
    """The shared-prefix path (`shared_prefix` is True): one pass per prompt, rows continuing its
    cache == one prompt + response pass per row; rows out of order, prompt 0 with three rows. The
    routers and experts get the same gradient both ways."""
    a = lm.adapter
    assert a.shared_prefix
    prompts = _prompts(a, images)[:2]
    row_prompt = [0, 1, 0, 0]
    responses = [
        torch.tensor([5, 6, 7]),
        torch.tensor([8, 9]),
        torch.tensor([10]),
        torch.tensor([11, 12, 13, 14]),
    ]
    lengths = [r.numel() for r in responses]
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    blocked = torch.tensor(a.blocked_token_ids(lm.model.get_input_embeddings().num_embeddings))
    pad = a.tokenizer.pad_token_id
    weights = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))

    def run(grouped: bool):
        lm.model.zero_grad()
        if grouped:
            logp, ent = grouped_response_logprobs(
                lm.model, a, prompts, row_prompt, responses, pad, 0.7, blocked, True, entropy_grad=True
            )
        else:
            seqs = [prompts[p].with_response(r) for p, r in zip(row_prompt, responses, strict=True)]
            logp, ent = response_logprobs(lm.model, seqs, lengths, pad, 0.7, blocked, True, entropy_grad=True)
        ((logp + ent) * weights * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in lm.model.named_parameters() if p.grad is not None}
        lm.model.zero_grad()
        return logp * mask, ent * mask, grads

    full, grouped = run(False), run(True)
    torch.testing.assert_close(grouped[0], full[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grouped[1], full[1], atol=1e-5, rtol=1e-4)
    assert grouped[2].keys() == full[2].keys()
    names = " ".join(full[2])
    for part in ("vision_tower", "multi_modal_projector", "mlp.gate.weight", "mlp.experts.gate_up_proj"):
        assert part in names, part
    for name, g in full[2].items():
        torch.testing.assert_close(grouped[2][name], g, atol=1e-5, rtol=1e-3, msg=name)


# ---- module groups, router, LoRA ---------------------------------------------------------------


def test_groups_cover_every_parameter_once(lm):
    groups = lm.adapter.parameter_groups(lm.model)
    assert list(groups) == ["vision", "connector", "language", "router", "experts"]
    names = [n for g in groups.values() for n, _ in g]
    assert sorted(names) == sorted(n for n, _ in lm.model.named_parameters())
    assert all(groups.values())
    layers = lm.model.config.text_config.num_hidden_layers
    assert sorted(n for n, _ in groups["router"]) == [
        f"model.language_model.layers.{i}.mlp.gate.weight" for i in range(layers)
    ]
    # Fused experts: gate_up_proj [E, 2I, H] and down_proj [E, H, I] per layer, E = 4, H = 64, I = 48.
    shapes = {n.rpartition(".")[2]: tuple(p.shape) for n, p in groups["experts"]}
    assert len(groups["experts"]) == 2 * layers
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


def test_lora_reaches_the_fused_experts_and_trains_them(tiny_models, images):
    lm = load_model(tiny_models["internvl_moe"])
    a = lm.adapter
    batch = collate([a.encode(_sample([images["small"]]), PLAIN, response="<answer>1</answer>")], 0)
    with torch.no_grad():
        base = lm.model(**batch).logits
    modules, parameters = a.lora_targets(lm.model, ("language", "experts", "router"))
    assert a.lora_targets(lm.model, ("router",)) == ([], [])  # the router has no LoRA target
    assert sorted(p.rpartition(".")[2] for p in parameters) == [
        "down_proj",
        "down_proj",
        "gate_up_proj",
        "gate_up_proj",
    ]
    assert len(modules) == 8 and all(".self_attn." in m for m in modules)  # q, k, v, o x 2 layers
    model = get_peft_model(
        lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=modules, target_parameters=parameters)
    )
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)  # peft starts B at 0: make the adapters matter
    groups = a.parameter_groups(model)
    expert_lora = [(n, p) for n, p in groups["experts"] if "lora_" in n]
    assert len(expert_lora) == 8  # A and B for gate_up_proj and down_proj, 2 layers
    assert {g for g, ps in groups.items() for n, _ in ps if "lora_" in n} == {"language", "experts"}
    out = model(**batch).logits
    assert (out - base).abs().max() > 1e-3
    out.float().logsumexp(-1).sum().backward()
    for n, p in expert_lora:
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    with model.disable_adapter(), torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", ["grouped_mm", "batched_mm"])
def test_experts_kernels_match_eager(tiny_models, images, kernel):
    """transformers' grouped_mm and batched_mm expert kernels (model.experts_implementation) run
    forward and backward on CPU and equal the eager loop over experts."""
    path = tiny_models["internvl_moe"]
    results = {}
    for impl in ("eager", kernel):
        lm = load_model(path, experts_implementation=impl)
        assert lm.model.config.text_config._experts_implementation == impl
        items = [
            lm.adapter.encode(_sample([images[k]]), PLAIN, response="<answer>3</answer>")
            for k in ("small", "big")
        ]
        logits = lm.model(**collate(items, lm.adapter.tokenizer.pad_token_id)).logits
        logits.float().logsumexp(-1).sum().backward()
        results[impl] = (
            logits.detach(),
            {n: p.grad for n, p in lm.model.named_parameters() if ".experts." in n},
        )
    torch.testing.assert_close(results[kernel][0], results["eager"][0], atol=1e-5, rtol=1e-5)
    for name, grad in results["eager"][1].items():
        assert grad.abs().sum() > 0
        torch.testing.assert_close(results[kernel][1][name], grad, atol=1e-4, rtol=1e-4, msg=name)


# ---- checkpoints, generation, boxes ------------------------------------------------------------


def test_save_load_round_trip_keeps_weights_processor_and_outputs(lm, images, tmp_path):
    lm.model.save_pretrained(tmp_path)
    lm.processor.save_pretrained(tmp_path)
    again = load_model(tmp_path)
    assert type(again.adapter) is InternVLMoeAdapter
    assert type(again.processor).__name__ == "InternVLImageOnlyProcessor"
    before, after = lm.model.state_dict(), again.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    enc = again.adapter.encode(_sample([images["big"]]), PLAIN)
    ref = lm.adapter.encode(_sample([images["big"]]), PLAIN)
    assert torch.equal(enc.tokens["input_ids"], ref.tokens["input_ids"])
    batch = collate([enc], 0)
    with torch.no_grad():
        assert torch.equal(again.model(**batch).logits, lm.model(**batch).logits)


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


def test_hf_backend_greedy_matches_model_generate(lm, images):
    """vlrl's shared-prefix backend (left padding, explicit decode positions) decodes what
    transformers' generate decodes for each prompt alone."""
    prompts = _prompts(lm.adapter, images)
    groups = HFRolloutBackend(lm.model, lm.adapter).generate(prompts, SamplingParams(2, 12, temperature=0))
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    banned = lm.adapter.blocked_token_ids(vocab)
    for prompt, group in zip(prompts, groups, strict=True):
        ref = lm.model.generate(
            **collate([prompt], lm.adapter.tokenizer.pad_token_id),
            do_sample=False,
            max_new_tokens=12,
            suppress_tokens=banned,
            return_dict_in_generate=True,
            output_logits=True,
        )
        ids = ref.sequences[0, prompt.length :]
        logits = torch.cat(ref.logits).float()
        logits[:, banned] = float("-inf")
        ref_logp = logits.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
        for c in group:
            assert c.token_ids.tolist() == ids.tolist()
            torch.testing.assert_close(c.logprobs, ref_logp, atol=1e-4, rtol=0)


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
