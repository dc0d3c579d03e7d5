"""The Policy: scoring paths chosen by the family's capability, the vision cache, the reference,
and the router load-balancing loss of MoE models."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from vlrl.data.prompts import TEMPLATES
from vlrl.data.sample import Sample
from vlrl.models import policy as policy_module
from vlrl.models.batching import collate
from vlrl.models.loading import load_model
from vlrl.models.policy import Policy


def prompts_and_rows(adapter, images):
    samples = [
        Sample("a", "How many circles?", "1", images=[images["small"]]),
        Sample("b", "Which colour?", "2", images=[images["big"]]),
    ]
    prompts = [adapter.encode(s, TEMPLATES["answer_only"]) for s in samples]
    # Three rows of the first prompt, one of the second; responses of different lengths.
    row_prompt = [0, 0, 0, 1]
    responses = [torch.tensor(r) for r in ([5, 6, 7], [8, 9], [10], [11, 12, 13, 14])]
    return prompts, row_prompt, responses


def make_policy(lm, **kwargs) -> Policy:
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    blocked = torch.tensor(lm.adapter.blocked_token_ids(vocab))
    return Policy(
        lm.model, lm.adapter, pad_id=lm.adapter.tokenizer.pad_token_id, blocked_ids=blocked, **kwargs
    )


def test_a_family_without_shared_prefix_is_scored_by_padded_passes_with_the_same_numbers(
    tiny_models, images, monkeypatch
):
    lm = load_model(tiny_models["qwen2_vl"])
    prompts, row_prompt, responses = prompts_and_rows(lm.adapter, images)
    shared = make_policy(lm).frozen_logprobs(prompts, row_prompt, responses, 1.0)

    lm.adapter.shared_prefix = False  # what a family that cannot re-index its cache declares
    padded_policy = make_policy(lm)
    assert not padded_policy.shared_prefix

    def refuse(*args, **kwargs):
        raise AssertionError("the shared-prefix path ran for a family that does not support it")

    monkeypatch.setattr(policy_module, "grouped_response_logprobs", refuse)
    padded = padded_policy.frozen_logprobs(prompts, row_prompt, responses, 1.0)
    mask = torch.zeros_like(padded, dtype=torch.bool)
    for i, r in enumerate(responses):
        mask[i, : r.numel()] = True
    torch.testing.assert_close(padded[mask], shared[mask], atol=1e-5, rtol=1e-5)


def test_the_run_can_forbid_the_shared_prefix_even_when_the_family_allows_it(tiny_models):
    lm = load_model(tiny_models["qwen2_vl"])
    assert lm.adapter.shared_prefix
    assert not make_policy(lm, shared_prefix=False).shared_prefix  # gradient checkpointing


def test_the_vision_cache_is_made_only_when_reuse_is_allowed_and_changes_nothing(tiny_models, images):
    lm = load_model(tiny_models["qwen2_vl"])
    prompts, row_prompt, responses = prompts_and_rows(lm.adapter, images)
    assert make_policy(lm).vision_caches(prompts) is None
    policy = make_policy(lm, reuse_vision=True)
    vision = policy.vision_caches(prompts)
    assert len(vision) == 2 and all(v is not None for v in vision)
    plain = policy.score(prompts, row_prompt, responses, 1.0).logprobs
    cached = policy.score(prompts, row_prompt, responses, 1.0, vision=vision).logprobs
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)


def test_the_reference_is_the_frozen_copy_or_loras_base_weights(tiny_models, images):
    lm = load_model(tiny_models["qwen2_vl"])
    prompts, row_prompt, responses = prompts_and_rows(lm.adapter, images)
    with pytest.raises(ValueError, match="no reference model"):
        make_policy(lm).frozen_logprobs(prompts, row_prompt, responses, 1.0, reference=True)
    base = make_policy(lm).frozen_logprobs(prompts, row_prompt, responses, 1.0)

    modules, _ = lm.adapter.lora_targets(lm.model, ("language",))
    lm.model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=modules))
    for name, p in lm.model.named_parameters():
        if "lora_B" in name:  # peft starts B at 0: the adapters must change the outputs
            torch.nn.init.normal_(p, std=0.5)
    policy = make_policy(lm, lora_reference=True)
    adapted = policy.frozen_logprobs(prompts, row_prompt, responses, 1.0)
    reference = policy.frozen_logprobs(prompts, row_prompt, responses, 1.0, reference=True)
    torch.testing.assert_close(reference, base, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(adapted, base, atol=1e-3)


def test_the_router_loss_is_the_coefficient_times_transformers_aux_loss_and_trains_the_router(
    tiny_models, images
):
    coef = 0.01
    lm = load_model(tiny_models["qwen3_vl_moe"], router_aux_loss_coef=coef)
    prompts, row_prompt, responses = prompts_and_rows(lm.adapter, images)
    policy = make_policy(lm, router_aux_loss_coef=coef)  # a router loss runs padded passes
    torch.manual_seed(0)
    scores = policy.score(prompts, row_prompt, responses, 1.0)
    sequences = [prompts[p].with_response(r) for p, r in zip(row_prompt, responses, strict=True)]
    batch = collate(sequences, lm.adapter.tokenizer.pad_token_id)
    positions = lm.adapter.position_ids(lm.model, batch)
    with torch.no_grad():
        aux = lm.model(**batch, position_ids=positions, use_cache=False, output_router_logits=True).aux_loss
    assert aux is not None and aux.item() > 0
    torch.testing.assert_close(scores.model_loss.detach(), coef * aux, atol=1e-6, rtol=1e-5)
    scores.model_loss.backward()
    routers = lm.adapter.parameter_groups(lm.model)["router"]
    assert routers and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in routers)


def test_without_a_coefficient_no_router_logits_are_collected(tiny_models, images):
    lm = load_model(tiny_models["qwen3_vl_moe"])
    assert lm.model.config.text_config.output_router_logits is False
    prompts, row_prompt, responses = prompts_and_rows(lm.adapter, images)
    assert make_policy(lm).score(prompts, row_prompt, responses, 1.0).model_loss is None


def test_a_family_whose_forward_has_no_router_loss_is_refused(tiny_models):
    lm = load_model(tiny_models["internvl_moe"])
    # transformers' InternVL passes no router logits up from its Qwen3-MoE language model.
    with pytest.raises(ValueError, match="computes no router load-balancing loss"):
        make_policy(lm, router_aux_loss_coef=0.01)
