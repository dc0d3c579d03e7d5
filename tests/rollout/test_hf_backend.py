"""The shared-prefix HF backend on the tiny models of every family.

Prompt batches mix 1-image, 2-image and text-only prompts of different lengths, so the left
padding and the M-RoPE decode positions are exercised together.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vlrl.data.prompts import TEMPLATES
from vlrl.models.batching import collate
from vlrl.rollout import BACKENDS, FINISH_REASONS, HFRolloutBackend, SamplingParams, make_backend

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "internvl", "idefics3")


def encode_all(lm, samples):
    return [lm.adapter.encode(s, TEMPLATES["answer_only"]) for s in samples]


def _banned_ids(lm) -> list[int]:
    """Placeholders and the spare embedding rows beyond the tokenizer."""
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    return lm.adapter.placeholder_token_ids() + list(range(len(lm.adapter.tokenizer), vocab))


def _ids(groups) -> list[list[list[int]]]:
    return [[c.token_ids.tolist() for c in group] for group in groups]


@pytest.mark.parametrize("family", FAMILIES)
def test_groups_have_the_requested_shape(loaded, samples, family):
    lm = loaded[family]
    prompts = encode_all(lm, samples)
    backend = HFRolloutBackend(lm.model, lm.adapter)
    groups = backend.generate(prompts, SamplingParams(4, 8, seed=0))
    assert len(groups) == 3 and all(len(g) == 4 for g in groups)
    for c in (c for g in groups for c in g):
        assert c.token_ids.dtype == torch.long and c.logprobs.dtype == torch.float32
        assert c.token_ids.ndim == 1 and c.token_ids.shape == c.logprobs.shape
        assert 1 <= c.token_ids.shape[0] <= 8
        assert c.finish_reason in FINISH_REASONS
        ends_on_stop = int(c.token_ids[-1]) in backend.stop_token_ids
        assert c.finish_reason == ("stop" if ends_on_stop else "length")
        if c.finish_reason == "length":
            assert c.token_ids.shape[0] == 8
        # Stop tokens appear only last.
        assert not set(c.token_ids[:-1].tolist()) & set(backend.stop_token_ids)
        assert bool((c.logprobs <= 0).all()) and isinstance(c.text, str)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_model_generate_per_prompt(loaded, samples, family):
    """Shared prefix + left padding + explicit decode positions = HF generate on each prompt alone.

    Tokens must match exactly and log-probs to 1e-4. (Checked by mutation: decode positions off
    by one, or counted 1-D for M-RoPE, change these log-probs; the greedy tokens of a random tiny
    model alone do not always notice.)
    """
    lm = loaded[family]
    prompts = encode_all(lm, samples)
    assert len({p.length for p in prompts}) == 3
    groups = HFRolloutBackend(lm.model, lm.adapter).generate(prompts, SamplingParams(2, 24, temperature=0))
    pad = lm.adapter.tokenizer.pad_token_id
    for prompt, group in zip(prompts, groups, strict=True):
        # HF's greedy knows nothing of placeholders; suppress them as the backend does.
        ref = lm.model.generate(
            **collate([prompt], pad),
            do_sample=False,
            max_new_tokens=24,
            suppress_tokens=_banned_ids(lm),
            return_dict_in_generate=True,
            output_logits=True,
        )
        ids = ref.sequences[0, prompt.length :]
        logits = torch.cat(ref.logits).float()  # [T, V] raw logits per step
        logits[:, _banned_ids(lm)] = float("-inf")
        ref_logp = logits.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
        for c in group:
            assert c.token_ids.tolist() == ids.tolist()
            torch.testing.assert_close(c.logprobs, ref_logp, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_logprobs_match_a_teacher_forced_forward(loaded, samples, family):
    """Behaviour log-probs = log_softmax(logits / T) at the response tokens, placeholders masked,
    from one right-padded forward pass over prompt + completion (what the trainer computes)."""
    lm = loaded[family]
    prompts = encode_all(lm, samples)
    params = SamplingParams(2, 12, temperature=0.7, top_k=50, top_p=0.9, seed=1)
    groups = HFRolloutBackend(lm.model, lm.adapter).generate(prompts, params)
    items = [p.with_response(c.token_ids) for p, g in zip(prompts, groups, strict=True) for c in g]
    batch = collate(items, lm.adapter.tokenizer.pad_token_id, padding_side="right")
    with torch.no_grad():
        logits = lm.model(**batch, position_ids=lm.adapter.position_ids(lm.model, batch)).logits.float()
    logits[..., _banned_ids(lm)] = float("-inf")
    logp = (logits / params.temperature).log_softmax(-1)
    completions = [c for g in groups for c in g]
    for row, (item, c) in enumerate(zip(items, completions, strict=True)):
        start, n = item.prompt_length, c.token_ids.shape[0]
        expected = logp[row, start - 1 : start - 1 + n].gather(-1, c.token_ids[:, None]).squeeze(-1)
        torch.testing.assert_close(c.logprobs, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_placeholders_are_never_sampled(loaded, samples, family):
    lm = loaded[family]
    prompts = encode_all(lm, samples[:2])
    banned = set(_banned_ids(lm))
    groups = HFRolloutBackend(lm.model, lm.adapter).generate(
        prompts, SamplingParams(8, 64, temperature=5.0, seed=0)
    )
    sampled = [t for ids in _ids(groups) for row in ids for t in row]
    assert len(sampled) > 500 and not banned & set(sampled)
    # Without the mask they do appear: at T = 5 the random model is near uniform over ~400 ids.
    torch.manual_seed(0)
    plain = lm.model.generate(
        **collate(prompts[:1], lm.adapter.tokenizer.pad_token_id),
        do_sample=True,
        temperature=5.0,
        max_new_tokens=64,
        num_return_sequences=8,
    )[:, prompts[0].length :]
    assert banned & set(plain.flatten().tolist())


@pytest.mark.parametrize("family", FAMILIES)
def test_seed_fixes_the_samples(loaded, samples, family):
    lm = loaded[family]
    prompts = encode_all(lm, samples)
    backend = HFRolloutBackend(lm.model, lm.adapter)
    first = backend.generate(prompts, SamplingParams(3, 10, seed=7))
    again = backend.generate(prompts, SamplingParams(3, 10, seed=7))
    other = backend.generate(prompts, SamplingParams(3, 10, seed=8))
    assert _ids(first) == _ids(again)
    assert _ids(first) != _ids(other)
    for a, b in zip(first, again, strict=True):
        assert all(torch.equal(x.logprobs, y.logprobs) for x, y in zip(a, b, strict=True))
    # Within a group the G rows are independent draws, not copies.
    assert any(len({tuple(row) for row in group}) > 1 for group in _ids(first))


def _vision_rows(pixels: torch.Tensor) -> int:
    """Rows the vision tower sees: Idefics3's per-sample [1, images, 3, S, S] holds `images` of them."""
    return pixels.shape[0] * pixels.shape[1] if pixels.dim() == 5 else pixels.shape[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_and_prefill_run_once_per_prompt_not_per_sample(loaded, samples, family):
    lm = loaded[family]
    prompts = encode_all(lm, samples)
    vision = lm.model.get_submodule(lm.adapter.module_patterns["vision"][0])
    vision_rows, lm_inputs = [], []

    def on_vision(_module, args, kwargs):
        vision_rows.append(next(v for v in (*args, *kwargs.values()) if torch.is_tensor(v)).shape[0])

    def on_forward(_module, _args, kwargs):
        lm_inputs.append(tuple(kwargs["input_ids"].shape))

    hooks = [
        vision.register_forward_pre_hook(on_vision, with_kwargs=True),
        lm.model.register_forward_pre_hook(on_forward, with_kwargs=True),
    ]
    try:
        HFRolloutBackend(lm.model, lm.adapter).generate(prompts, SamplingParams(4, 5, seed=0))
    finally:
        for h in hooks:
            h.remove()
    # One vision pass over exactly the prompts' own patches / tiles (not 4 copies of them).
    pixels = lm.adapter.vision_keys[0]
    assert vision_rows == [sum(_vision_rows(p.vision[pixels]) for p in prompts if pixels in p.vision)]
    width = max(p.length for p in prompts)
    assert lm_inputs[0] == (3, width)  # prefill: P rows
    assert set(lm_inputs[1:]) == {(12, 1)}  # decode: P * G rows, one token each


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_token_ends_the_row(loaded, samples, family):
    lm = loaded[family]
    prompts = encode_all(lm, samples[:1])
    greedy = SamplingParams(2, 16, temperature=0)
    free = HFRolloutBackend(lm.model, lm.adapter).generate(prompts, greedy)[0][0].token_ids.tolist()
    stop = free[3]
    cut = free[: free.index(stop) + 1]
    groups = HFRolloutBackend(lm.model, lm.adapter, stop_token_ids=[stop]).generate(prompts, greedy)
    for c in groups[0]:
        assert c.token_ids.tolist() == cut and c.finish_reason == "stop"
        assert c.logprobs.shape[0] == len(cut)


def test_rows_stop_independently(loaded, samples):
    """A row that stops keeps its tokens; the others run on to the length limit."""
    lm = loaded["qwen2_vl"]
    prompts = encode_all(lm, samples)
    greedy = SamplingParams(1, 16, temperature=0)
    free = _ids(HFRolloutBackend(lm.model, lm.adapter).generate(prompts, greedy))
    # A token of the first row's greedy answer that the other rows never produce.
    stop = next(t for t in free[0][0] if all(t not in g[0] for g in free[1:]))
    cut = free[0][0][: free[0][0].index(stop) + 1]
    groups = HFRolloutBackend(lm.model, lm.adapter, stop_token_ids=[stop]).generate(prompts, greedy)
    assert groups[0][0].finish_reason == "stop" and groups[0][0].token_ids.tolist() == cut
    assert [g[0].finish_reason for g in groups[1:]] == ["length", "length"]
    assert _ids(groups[1:]) == free[1:]


@pytest.mark.parametrize("family", FAMILIES)
def test_top_k_one_is_greedy(loaded, samples, family):
    lm = loaded[family]
    prompts = encode_all(lm, samples)
    backend = HFRolloutBackend(lm.model, lm.adapter)
    greedy = backend.generate(prompts, SamplingParams(2, 12, temperature=0))
    top1 = backend.generate(prompts, SamplingParams(2, 12, temperature=1.0, top_k=1, seed=3))
    assert _ids(top1) == _ids(greedy)


def test_max_batch_rows_chunks_prompts_without_changing_results(loaded, samples):
    lm = loaded["qwen2_5_vl"]
    prompts = encode_all(lm, samples)
    greedy = SamplingParams(2, 8, temperature=0)
    whole = HFRolloutBackend(lm.model, lm.adapter).generate(prompts, greedy)
    shapes = []
    hook = lm.model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        chunked = HFRolloutBackend(lm.model, lm.adapter, max_batch_rows=5).generate(prompts, greedy)
    finally:
        hook.remove()
    assert _ids(chunked) == _ids(whole)
    prefill_rows = [rows for rows, width in shapes if width > 1]
    assert prefill_rows == [2, 1]  # 5 rows // group of 2 = 2 prompts per chunk
    with pytest.raises(ValueError, match="max_batch_rows"):
        HFRolloutBackend(lm.model, lm.adapter, max_batch_rows=1).generate(prompts, greedy)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_prompts_samples_do_not_depend_on_its_batch(loaded, samples, family):
    """What data parallelism relies on: a rank sampling prompts 1.. of a step alone (first_prompt=1)
    draws what the whole batch would have drawn for them, and so does a smaller chunk."""
    lm = loaded[family]
    prompts = encode_all(lm, samples)
    params = SamplingParams(4, 12, temperature=1.5, seed=11)
    whole = HFRolloutBackend(lm.model, lm.adapter).generate(prompts, params)
    tail = HFRolloutBackend(lm.model, lm.adapter).generate(prompts[1:], replace(params, first_prompt=1))
    chunked = HFRolloutBackend(lm.model, lm.adapter, max_batch_rows=4).generate(prompts, params)
    assert _ids(tail) == _ids(whole)[1:]
    assert _ids(chunked) == _ids(whole)
    # Without first_prompt the same prompts get prompt 0's and 1's streams: other samples.
    assert _ids(HFRolloutBackend(lm.model, lm.adapter).generate(prompts[1:], params)) != _ids(whole)[1:]


def test_train_mode_is_restored(loaded, samples):
    lm = loaded["internvl"]
    vision = lm.model.get_submodule(lm.adapter.module_patterns["vision"][0])
    lm.model.train()
    vision.eval()  # e.g. a frozen tower kept in eval
    seen = []
    hook = lm.model.register_forward_pre_hook(lambda m, _a: seen.append(m.training))
    try:
        HFRolloutBackend(lm.model, lm.adapter).generate(encode_all(lm, samples[:1]), SamplingParams(2, 3))
    finally:
        hook.remove()
        assert lm.model.training and not vision.training
        lm.model.eval()
    assert seen and not any(seen)


def test_default_stop_ids_come_from_generation_config_and_tokenizer(loaded):
    lm = loaded["qwen2_vl"]
    backend = HFRolloutBackend(lm.model, lm.adapter)
    tok = lm.adapter.tokenizer
    eos = lm.model.generation_config.eos_token_id
    assert set(backend.stop_token_ids) == {*eos, tok.eos_token_id}
    assert len(backend.stop_token_ids) == len(set(backend.stop_token_ids))


def test_backends_table(loaded):
    lm = loaded["qwen2_vl"]
    assert isinstance(make_backend("hf", lm.model, lm.adapter, max_batch_rows=8), HFRolloutBackend)
    assert set(BACKENDS) == {"hf", "vllm", "server"}
    with pytest.raises(ValueError, match="unknown rollout backend 'vllmm'; valid: hf, server, vllm"):
        make_backend("vllmm", lm.model, lm.adapter)


@pytest.mark.parametrize("family", FAMILIES)
def test_finished_rows_leave_the_batch_without_disturbing_the_others(loaded, samples, family):
    """With many stop tokens rows finish early and are dropped from the decode batch (cache,
    mask and positions re-indexed): what the remaining rows sample must be what the same seed
    gives with no row ever stopping, up to each row's stop, and their log-probs must still match
    a teacher-forced pass."""
    lm = loaded[family]
    prompts = encode_all(lm, samples)
    params = SamplingParams(4, 16, temperature=1.5, seed=5)
    vocab = len(lm.adapter.tokenizer)
    never = HFRolloutBackend(lm.model, lm.adapter, stop_token_ids=[vocab + 1]).generate(prompts, params)
    stops = list(range(0, vocab, 6))
    rows_per_step = []
    hook = lm.model.register_forward_pre_hook(
        lambda _m, _a, kw: rows_per_step.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        groups = HFRolloutBackend(lm.model, lm.adapter, stop_token_ids=stops).generate(prompts, params)
    finally:
        hook.remove()
    assert rows_per_step[0] == 3 and min(rows_per_step[1:]) < 12, "no row was dropped"  # 3 prompts x 4
    for group, free in zip(groups, never, strict=True):
        for c, f in zip(group, free, strict=True):
            ids = f.token_ids.tolist()
            cut = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
            assert c.token_ids.tolist() == ids[:cut]
            assert c.finish_reason == ("stop" if cut < len(ids) or ids[-1] in stops else "length")
            torch.testing.assert_close(c.logprobs, f.logprobs[:cut], atol=1e-4, rtol=0)
