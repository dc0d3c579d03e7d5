"""Teacher-forced response log-probs: alignment with the sampled tokens, cached image features."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vlrl.data.prompts import TEMPLATES
from vlrl.data.sample import Sample
from vlrl.models import logprobs
from vlrl.models.adapters import VisionCache
from vlrl.models.loading import load_model
from vlrl.models.logprobs import (
    grouped_response_logprobs,
    response_logprobs,
    response_mask,
    token_budget_batches,
)


def test_token_budget_batches_pack_consecutive_rows_within_budget():
    # lengths 3,3,3 at budget 7: [0,1] is 2 x 3 = 6; adding row 2 would be 9 > 7.
    assert token_budget_batches([3, 3, 3], 7) == [[0, 1], [2]]
    # A longer row raises the padded width for the whole group: 2 x 5 = 10 > 8.
    assert token_budget_batches([3, 5, 2], 8) == [[0], [1], [2]]
    # A row over budget still gets its own batch.
    assert token_budget_batches([20, 1], 8) == [[0], [1]]


def two_prompts(adapter, images):
    """A one-image prompt and a longer two-image one (so batches need padding)."""
    samples = [
        Sample(id="a", question="How many?", answer="1", images=[images["small"]]),
        Sample(
            id="b",
            question="Image 1: <image> Image 2: <image> more?",
            answer="1",
            images=[images["big"], images["small"]],
        ),
    ]
    return [adapter.encode(s, TEMPLATES["answer_only"]) for s in samples]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "internvl", "idefics3"])
def test_cached_image_features_give_the_same_logprobs(tiny_models, images, family):
    lm = load_model(tiny_models[family])
    a = lm.adapter
    responses = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    prompts = two_prompts(a, images)
    seqs = [p.with_response(r) for p, r in zip(prompts, responses, strict=True)]
    blocked = torch.tensor(a.placeholder_token_ids())
    args = (lm.model, seqs, [3, 2], a.tokenizer.pad_token_id, 1.0, blocked)
    with torch.no_grad():
        plain, _ = response_logprobs(*args)
        cache = VisionCache.concat([a.vision_cache(lm.model, p.vision) for p in prompts])
        cached, _ = response_logprobs(*args, adapter=a, vision=cache)
    torch.testing.assert_close(plain, cached, atol=1e-5, rtol=1e-5)
    # Teacher forcing picks the logit that predicts each response token.
    with torch.no_grad():
        from vlrl.models.batching import collate

        logits = lm.model(**collate(seqs[:1], a.tokenizer.pad_token_id)).logits[0].float()
    logits[:, blocked] = -1e9
    start = prompts[0].length
    expected = torch.log_softmax(logits[start - 1 : start + 2], -1).gather(1, responses[0][:, None])[:, 0]
    torch.testing.assert_close(plain[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "internvl", "idefics3"])
def test_grouped_logprobs_match_full_passes_in_value_and_gradient(tiny_models, images, family):
    """One pass per prompt + cached continuations == one prompt + response pass per row.

    Rows are out of prompt order and prompt 0 has three rows (a group), prompts of different
    lengths exercise the left padding; responses of different lengths the right padding.
    """
    lm = load_model(tiny_models[family])
    a = lm.adapter
    prompts = two_prompts(a, images)
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
            logp, ent = response_logprobs(
                lm.model, seqs, lengths, pad, 0.7, blocked, with_entropy=True, entropy_grad=True
            )
        ((logp + ent) * weights * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in lm.model.named_parameters() if p.grad is not None}
        return logp * mask, ent * mask, grads

    full, grouped = run(False), run(True)
    # As a metric only, the entropy carries no graph (its softmax is not kept for backward).
    _, metric = grouped_response_logprobs(
        lm.model, a, prompts, row_prompt, responses, pad, 0.7, blocked, True
    )
    assert metric.grad_fn is None
    torch.testing.assert_close(grouped[0], full[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grouped[1], full[1], atol=1e-5, rtol=1e-4)
    assert grouped[2].keys() == full[2].keys()
    vision = [n for n in full[2] if "visual" in n or "vision" in n]
    assert vision, "the vision tower must get gradient through the shared prompt"
    for name, g in full[2].items():
        torch.testing.assert_close(grouped[2][name], g, atol=1e-5, rtol=1e-3, msg=name)


class VocabularyRows(TorchDispatchMode):
    """Records, for every tensor any op allocates (forward and backward; views and in-place results
    share an input's memory and are left out), the rows of a [..., V] tensor by dtype: the largest
    float32 one is the scoring path's biggest float32 temporary."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.largest = vocab, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in inputs:
                continue
            if t.dim() > 1 and t.shape[-1] == self.vocab:
                self.largest[t.dtype] = max(self.largest.get(t.dtype, 0), t.numel() // self.vocab)
        return out


@pytest.mark.parametrize("grouped", [False, True])
def test_bf16_scoring_never_makes_a_float32_copy_of_the_logits(tiny_models, images, monkeypatch, grouped):
    """A bf16 model, 4 responses of 6 tokens (24 scored rows), chunks of 4 rows: no float32
    [.., V] tensor of more than 4 rows exists in forward or backward (the old path upcast all 24,
    and kept them for backward), and the logits themselves cover the responses, not the prompts."""
    monkeypatch.setattr(logprobs, "CHUNK_ROWS", 4)
    lm = load_model(tiny_models["qwen2_vl"])
    model, a = lm.model.to(torch.bfloat16), lm.adapter
    vocab = model.get_output_embeddings().weight.shape[0]
    prompts = two_prompts(a, images)
    row_prompt, responses = [0, 1, 0, 1], [torch.arange(5, 11) + i for i in range(4)]
    blocked = torch.tensor(a.blocked_token_ids(vocab))
    pad = a.tokenizer.pad_token_id
    watch = VocabularyRows(vocab)
    with watch:
        if grouped:
            logp, ent = grouped_response_logprobs(
                model, a, prompts, row_prompt, responses, pad, 0.7, blocked, True
            )
        else:
            seqs = [prompts[p].with_response(r) for p, r in zip(row_prompt, responses, strict=True)]
            logp, ent = response_logprobs(model, seqs, [6] * 4, pad, 0.7, blocked, with_entropy=True)
        logp.sum().backward()
    assert logp.shape == ent.shape == (4, 6) and logp.dtype == torch.float32
    assert torch.isfinite(logp).all() and (logp < 0).all()
    assert watch.largest[torch.float32] <= 4
    # bf16 logits: 4 rows x 6 positions; a padded pass adds the two prompts' length difference and
    # the last position (which predicts nothing), never the prompts themselves.
    spread = prompts[1].length - prompts[0].length
    assert watch.largest[torch.bfloat16] <= 4 * (6 if grouped else 7 + spread)
    assert spread + 7 < prompts[0].length + 6  # so that the bound excludes the prompts' logits


def test_response_mask_marks_each_rows_first_length_positions():
    mask = response_mask([2, 0, 3])
    assert mask.dtype == torch.float32 and mask.shape == (3, 3)  # T = the longest response
    assert mask.tolist() == [[1, 1, 0], [0, 0, 0], [1, 1, 1]]
