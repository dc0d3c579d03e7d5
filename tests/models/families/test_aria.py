"""Aria: inputs (padded squares with a pixel mask, 16 image tokens), the vision cache, the shared
prefix, module groups (router, experts; shared experts in language), the router rule, LoRA on the
fused experts, save -> load, generation, boxes, and the real architecture's parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AriaConfig, AutoModelForImageTextToText

from vlrl.config import load_config
from vlrl.data.prompts import TEMPLATES
from vlrl.data.sample import Sample
from vlrl.models.adapters import AriaAdapter, VisionCache, adapter_for
from vlrl.models.batching import collate
from vlrl.models.loading import load_model
from vlrl.models.logprobs import grouped_response_logprobs, response_logprobs
from vlrl.rollout import HFRolloutBackend, SamplingParams
from vlrl.training.setup import check_model_groups

PLAIN = TEMPLATES["answer_only"]
TWO = "Image 1: <image>\nImage 2: <image>\nWhich image has more circles?"


@pytest.fixture(scope="module")
def lm(tiny_models):
    return load_model(tiny_models["aria"])


def _sample(images, question="How many shapes?"):
    return Sample(id="s", question=question, answer="1", images=list(images))


def _prompts(adapter, images):
    """A one-image prompt, a longer two-image one, and a text-only one (so batches pad)."""
    return [
        adapter.encode(_sample([images["small"]]), PLAIN),
        adapter.encode(_sample([images["big"], images["small"]], TWO), PLAIN),
        adapter.encode(_sample([], "What is 2 + 3?"), PLAIN),
    ]


# ---- inputs -------------------------------------------------------------------------------------


def test_images_become_masked_490px_squares_and_16_tokens_each(lm, images):
    enc = lm.adapter.encode(_sample([images["small"], images["big"]], TWO), PLAIN)
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


def test_left_padded_batch_with_adapter_positions_matches_each_prompt_alone(lm, images):
    """Plain 1-D positions that skip the left padding: each row of a left-padded batch gets the
    logits of its prompt alone (what the shared-prefix rollout and scoring run)."""
    prompts = _prompts(lm.adapter, images)
    pad = lm.adapter.tokenizer.pad_token_id
    batch = collate(prompts, pad, padding_side="left")
    pos = lm.adapter.position_ids(lm.model, batch)
    assert pos.shape == batch["input_ids"].shape
    with torch.no_grad():
        together = lm.model(**batch, position_ids=pos).logits
        for row, prompt in enumerate(prompts):
            real = batch["attention_mask"][row].bool()
            assert pos[row, real].tolist() == list(range(prompt.length))
            alone = lm.model(**collate([prompt], pad)).logits[0]
            torch.testing.assert_close(together[row, real], alone, atol=1e-5, rtol=1e-4)


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
        # The cache holds the projector's output only: 3 images x 16 queries x hidden 64.
        assert list(cache.output.keys()) == ["pooler_output"]
        assert cache.output["pooler_output"].shape == (3, 16, 64)
        zeros = VisionCache(type(cache.output)(pooler_output=torch.zeros_like(cache.output["pooler_output"])))
        blind, _ = response_logprobs(*args, adapter=a, vision=zeros)
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    assert (blind - plain).abs().max() > 1e-3  # the cached features do matter


def test_grouped_logprobs_match_full_passes_in_value_and_gradient(lm, images):
    """The shared-prefix path (`shared_prefix` is True): one pass per prompt, rows continuing its
    cache == one prompt + response pass per row; rows out of order, prompt 0 with three rows. The
    routed experts, shared experts and routers get the same gradient both ways."""
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
    for part in (
        "vision_tower",
        "multi_modal_projector",
        "mlp.router.weight",
        "mlp.experts.gate_up_proj",
        "shared_experts",
    ):
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
        f"model.language_model.layers.{i}.mlp.router.weight" for i in range(layers)
    ]
    # Fused experts stored input-major: gate_up_proj [E, H, 2I], down_proj [E, I, H]; E = 4, H = 64, I = 96.
    shapes = {n.rpartition(".")[2]: tuple(p.shape) for n, p in groups["experts"]}
    assert len(groups["experts"]) == 2 * layers
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


def test_lora_reaches_the_fused_experts_and_trains_them(tiny_models, images):
    lm = load_model(tiny_models["aria"])
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
    # The language group's linears: attention and the shared experts (2 layers x 4 + 3).
    assert len(modules) == 14 and sum(".shared_experts." in m for m in modules) == 6
    # The projector's MultiheadAttention out_proj is never called as a module: not a target.
    connector, _ = a.lora_targets(lm.model, ("connector",))
    assert connector and not any("multihead_attn" in m for m in connector)
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
    forward and backward on CPU and equal the eager loop over experts (Aria's fused weights are
    input-major: `is_transposed`)."""
    path = tiny_models["aria"]
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
    assert type(again.adapter) is AriaAdapter and again.adapter.family == "aria"
    assert type(again.processor).__name__ == "AriaProcessor"
    assert again.processor.image_processor.max_image_size == 490
    before, after = lm.model.state_dict(), again.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    enc = again.adapter.encode(_sample([images["big"]]), PLAIN)
    ref = lm.adapter.encode(_sample([images["big"]]), PLAIN)
    assert torch.equal(enc.tokens["input_ids"], ref.tokens["input_ids"])
    assert torch.equal(enc.vision["pixel_values"], ref.vision["pixel_values"])
    batch = collate([enc], 0)
    with torch.no_grad():
        assert torch.equal(again.model(**batch).logits, lm.model(**batch).logits)


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
