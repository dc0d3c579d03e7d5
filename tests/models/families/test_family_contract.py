"""The contract every model family keeps, checked on the tiny model of each family of
`vlrl.models.tiny.factory.FAMILIES` (a new family is covered by its factory entry):

- module groups: every parameter in exactly one group; an MoE model (fused expert weights) has
  router and experts groups, and the router group is `adapter.routers`' parameters;
- the vision cache: log-probs with `adapter.vision_cache` / `VisionCache.concat` equal those with
  pixels, and every field the cache keeps (Qwen3-VL's deepstack features too) moves them;
- the prefill: a left-padded batch with `adapter.position_ids` gives each prompt its own logits;
- the shared prefix: `grouped_response_logprobs` == `response_logprobs` in log-probs, entropies
  and every parameter's gradient;
- LoRA through `adapter.lora_targets`: every target (the MoE's fused experts included) trains;
- the experts kernels (MoE): grouped_mm and batched_mm equal the eager loop;
- save -> `load_model` gives the same adapter, inputs and logits;
- the HF backend's greedy decode == transformers' `generate` on each prompt alone.

What is one family's own (grids and positions, routers with hand numbers, file layouts, real
architectures and configs) is tested in tests/models/families/.
"""

from __future__ import annotations

import pytest
import torch
from family_inputs import PLAIN, make_sample, three_prompts
from peft import LoraConfig, get_peft_model

from vlrl.models.adapters import VisionCache
from vlrl.models.batching import collate
from vlrl.models.loading import load_model
from vlrl.models.logprobs import grouped_response_logprobs, response_logprobs
from vlrl.models.prefix import Prefix
from vlrl.models.tiny.factory import FAMILIES as FACTORY
from vlrl.rollout import HFRolloutBackend, SamplingParams

FAMILIES = tuple(FACTORY)


def _long_memory(model) -> None:
    """Gated-DeltaNet layers given a long memory. A random init draws each head's decay rate A
    from U(0.01, 16) (transformers' _init_weights), so a head may forget all but the last few
    tokens, and prompts with the same chat-template ending would leave nearly the same recurrent
    state. With A in [0.02, 0.5] the state carries the whole prompt: a state given to the wrong
    row, or a pad that leaked into it, shows in the outputs."""
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            if hasattr(layer, "linear_attn"):
                a = layer.linear_attn.A_log
                a.copy_(torch.linspace(0.02, 0.5, a.numel()).log())


# family -> what its tiny model needs so that the checks can tell a right answer from a wrong one
SETUP = {"qwen3_5": _long_memory, "qwen3_5_moe": _long_memory}


@pytest.fixture(scope="module")
def loaded(tiny_models):
    """family -> its tiny model, loaded (and set up) on first use."""

    class Loaded(dict):
        def __missing__(self, family):
            lm = self[family] = load_model(tiny_models[family])
            SETUP.get(family, lambda model: None)(lm.model)
            return lm

    return Loaded()


def _fused_experts(model) -> set[str]:
    """The MoE's fused expert weights ([E, ., .] per layer), found from the model, not the adapter."""
    return {
        n
        for n, p in model.named_parameters()
        if p.dim() == 3 and n.rpartition(".")[2] in ("gate_up_proj", "down_proj")
    }


def _zeros(value):
    """`value` (a tensor, or per-image / per-layer sequences of tensors) with every tensor zeroed."""
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    return type(value)(_zeros(v) for v in value)


@pytest.mark.parametrize("family", FAMILIES)
def test_module_groups_cover_every_parameter_exactly_once(loaded, family):
    lm = loaded[family]
    a, model = lm.adapter, lm.model
    groups = a.parameter_groups(model)
    assert list(groups) == list(a.groups())
    assert list(groups)[:3] == ["vision", "connector", "language"]
    names = [n for params in groups.values() for n, _ in params]
    assert len(names) == len(set(names))
    assert set(names) == {n for n, _ in model.named_parameters()}
    assert all(groups.values()), {g: len(params) for g, params in groups.items()}
    # The split is the architectural one.
    assert not any("embed_tokens" in n for n, _ in groups["vision"] + groups["connector"])
    assert any("lm_head" in n for n, _ in groups["language"])
    fused = _fused_experts(model)
    moe = {"router", "experts"} <= set(groups)
    assert moe == bool(fused) and set(groups) <= {"vision", "connector", "language", "router", "experts"}
    routers = a.routers(model)
    if not moe:
        assert routers == []
        return
    assert {n for n, _ in groups["experts"]} == fused
    # The router group is the parameters of the router modules (routing replay and load metrics).
    assert routers and [n for n, _ in routers] == sorted((n for n, _ in routers), key=_layer_index)
    router_params = {f"{n}.{p}" for n, m in routers for p, _ in m.named_parameters()}
    assert router_params == {n for n, _ in groups["router"]}


def _layer_index(name: str) -> int:
    return int(name.split(".layers.")[1].split(".")[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_cache_gives_the_logprobs_of_pixels(loaded, images, family):
    """Cached vision outputs (a text-only prompt among the image prompts) give the log-probs of
    pixels, in padded passes and (where the family shares prefixes) in the grouped path; and each
    field the cache keeps moves them when zeroed, so the equality is not vacuous."""
    lm = loaded[family]
    a, model = lm.adapter, lm.model
    prompts = three_prompts(a, images)
    responses = [torch.tensor([5, 6, 7]), torch.tensor([8, 9]), torch.tensor([10, 11, 12])]
    seqs = [p.with_response(r) for p, r in zip(prompts, responses, strict=True)]
    blocked = torch.tensor(a.placeholder_token_ids())
    pad = a.tokenizer.pad_token_id
    args = (model, seqs, [3, 2, 3], pad, 1.0, blocked)
    with torch.no_grad():
        plain, _ = response_logprobs(*args)
        cache = VisionCache.concat([a.vision_cache(model, p.vision) if p.vision else None for p in prompts])
        cached, _ = response_logprobs(*args, adapter=a, vision=cache)
        moved = {}
        for field in a.vision_output_fields:
            output = type(cache.output)(
                **{k: _zeros(v) if k == field else v for k, v in cache.output.items()}
            )
            without, _ = response_logprobs(*args, adapter=a, vision=VisionCache(output))
            moved[field] = (without - plain)[:2].abs().max().item()
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    assert list(cache.output.keys()) == list(a.vision_output_fields)
    assert all(m > 1e-3 for m in moved.values()), moved
    if not a.shared_prefix:
        return
    # The grouped path with the cache (its prefill skips the vision tower), two rows per prompt.
    rows = [0, 1, 2, 0, 1, 2]
    grouped = (model, a, prompts, rows, [responses[p] for p in rows], pad, 1.0, blocked)
    with torch.no_grad():
        grouped_plain, _ = grouped_response_logprobs(*grouped)
        grouped_cached, _ = grouped_response_logprobs(*grouped, vision=cache)
    torch.testing.assert_close(grouped_cached, grouped_plain, atol=1e-5, rtol=1e-5)
    real = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]])  # past a response's end: padding
    torch.testing.assert_close(grouped_plain[:3] * real, plain * real, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_prefill_gives_each_prompt_its_own_logits(loaded, images, family):
    """What the shared-prefix rollout and scoring run: a left-padded batch with the adapter's
    positions (1-D or 3-D, counting only real tokens) gives each row the logits of its prompt
    alone, where the model derives positions itself."""
    lm = loaded[family]
    prompts = three_prompts(lm.adapter, images)
    pad = lm.adapter.tokenizer.pad_token_id
    batch = collate(prompts, pad, padding_side="left")
    assert (batch["attention_mask"] == 0).sum(-1).min() == 0 < (batch["attention_mask"] == 0).sum(-1).max()
    with torch.no_grad():
        together = lm.model(**batch, position_ids=lm.adapter.position_ids(lm.model, batch)).logits
        for row, prompt in enumerate(prompts):
            alone = lm.model(**collate([prompt], pad)).logits[0]
            real = batch["attention_mask"][row].bool()
            torch.testing.assert_close(together[row, real], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_matches_full_passes_in_value_and_gradient(loaded, images, family):
    """One left-padded pass per prompt, its rows continuing its cache (keys and values, or
    Qwen3.5's conv and recurrent states, re-indexed per row) == one right-padded prompt + response
    pass per row: log-probs, entropies and every parameter's gradient. Prompt 0 has three rows,
    rows are out of prompt order, responses have 1 to 4 tokens, a text-only prompt is among them.
    Every parameter beyond the vision tower gets a gradient, so no part of the model (deepstack
    mergers, DeltaNet decay and conv, routers, experts) is left out of the comparison."""
    lm = loaded[family]
    a, model = lm.adapter, lm.model
    if not a.shared_prefix:
        pytest.skip(f"{family} is scored by padded full passes (shared_prefix is False)")
    prompts = three_prompts(a, images)
    row_prompt = [0, 1, 0, 2, 0]
    responses = [torch.tensor(r) for r in ([5, 6, 7], [8, 9], [10], [11, 12, 13, 14], [15, 16, 17, 18])]
    lengths = [r.numel() for r in responses]
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    blocked = torch.tensor(a.blocked_token_ids(model.get_input_embeddings().num_embeddings))
    pad = a.tokenizer.pad_token_id
    weights = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))

    def run(grouped: bool):
        model.zero_grad()
        if grouped:
            logp, ent = grouped_response_logprobs(
                model, a, prompts, row_prompt, responses, pad, 0.7, blocked, True, entropy_grad=True
            )
        else:
            seqs = [prompts[p].with_response(r) for p, r in zip(row_prompt, responses, strict=True)]
            logp, ent = response_logprobs(model, seqs, lengths, pad, 0.7, blocked, True, entropy_grad=True)
        ((logp + ent) * weights * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        return logp * mask, ent * mask, grads

    full, grouped = run(False), run(True)
    torch.testing.assert_close(grouped[0], full[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grouped[1], full[1], atol=1e-5, rtol=1e-4)
    assert grouped[2].keys() == full[2].keys()
    # Non-vacuous: every group gets gradient, and every parameter outside the vision tower (some
    # towers have final layers their model does not read, as Aria's post_layernorm).
    reached = {n for n, g in full[2].items() if g.abs().sum() > 0}
    groups = a.parameter_groups(model)
    assert all(reached & {n for n, _ in params} for params in groups.values())
    silent = [n for g, params in groups.items() if g != "vision" for n, _ in params if n not in reached]
    assert not silent, silent
    for name, g in full[2].items():
        torch.testing.assert_close(grouped[2][name], g, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_on_every_group_trains_every_target(tiny_models, images, family):
    """LoRA on all the family's groups through `adapter.lora_targets`: the router has no target,
    an MoE's fused experts are wrapped through peft's `target_parameters` (which refuses dropout),
    each adapter lands in its own group, and every adapter weight gets a gradient."""
    lm = load_model(tiny_models[family])
    a = lm.adapter
    batch = collate([a.encode(make_sample([images["small"]]), PLAIN, response="<answer>1</answer>")], 0)
    with torch.no_grad():
        base = lm.model(**batch).logits
    modules, parameters = a.lora_targets(lm.model, a.groups())
    fused = _fused_experts(lm.model)
    assert sorted(parameters) == sorted(fused)
    assert a.lora_targets(lm.model, ("router",)) == ([], [])
    model = get_peft_model(
        lm.model,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=modules, target_parameters=parameters or None, lora_dropout=0
        ),
    )
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)  # peft starts B at 0: make the adapters matter
    lora = {g: [(n, p) for n, p in ps if "lora_" in n] for g, ps in a.parameter_groups(model).items()}
    targets = {a.module_group(n) for n in modules + parameters}
    assert {g for g, ps in lora.items() if ps} == targets and {"language"} <= targets
    assert len(lora.get("experts", [])) == 2 * len(fused)  # A and B per fused weight
    out = model(**batch).logits
    assert (out - base).abs().max() > 1e-3
    out.float().logsumexp(-1).sum().backward()
    silent = [n for ps in lora.values() for n, p in ps if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, silent
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    with model.disable_adapter(), torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_experts_kernels_match_eager(tiny_models, images, family):
    """transformers' grouped_mm and batched_mm expert kernels (`model.experts_implementation`)
    run forward and backward on CPU and equal the eager loop over experts."""
    results = {}
    for impl in ("eager", "grouped_mm", "batched_mm"):
        lm = load_model(tiny_models[family], experts_implementation=impl)
        fused = _fused_experts(lm.model)
        if not fused:
            pytest.skip(f"{family} has no experts")
        assert lm.model.config.get_text_config()._experts_implementation == impl
        items = [
            lm.adapter.encode(make_sample([images[k]]), PLAIN, response="<answer>3</answer>")
            for k in ("small", "big")
        ]
        logits = lm.model(**collate(items, lm.adapter.tokenizer.pad_token_id)).logits
        logits.float().logsumexp(-1).sum().backward()
        results[impl] = logits.detach(), {n: p.grad for n, p in lm.model.named_parameters() if n in fused}
    for kernel in ("grouped_mm", "batched_mm"):
        torch.testing.assert_close(results[kernel][0], results["eager"][0], atol=1e-5, rtol=1e-5)
        for name, grad in results["eager"][1].items():
            assert grad.abs().sum() > 0
            torch.testing.assert_close(
                results[kernel][1][name], grad, atol=1e-4, rtol=1e-4, msg=f"{kernel} {name}"
            )


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip_gives_identical_logits(loaded, images, family, tmp_path):
    lm = loaded[family]
    lm.model.save_pretrained(tmp_path)
    lm.processor.save_pretrained(tmp_path)
    again = load_model(tmp_path)
    assert type(again.adapter) is type(lm.adapter) and again.adapter.family == family
    assert type(again.processor) is type(lm.processor)
    before, after = lm.model.state_dict(), again.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    enc = again.adapter.encode(make_sample([images["big"]]), PLAIN)
    ref = lm.adapter.encode(make_sample([images["big"]]), PLAIN)
    assert enc.tokens.keys() == ref.tokens.keys() and enc.vision.keys() == ref.vision.keys()
    assert all(torch.equal(enc.tokens[k], ref.tokens[k]) for k in ref.tokens)
    assert all(torch.equal(enc.vision[k], ref.vision[k]) for k in ref.vision)
    batch = collate([enc], lm.adapter.tokenizer.pad_token_id)
    with torch.no_grad():
        assert torch.equal(again.model(**batch).logits, lm.model(**batch).logits)


def _greedy_reference(lm, prompt, steps):
    """transformers' generate on the prompt alone, greedy, `steps` tokens (the caller turns its
    end-of-turn stop off): its tokens and their log-probs (blocked tokens masked, as the backend
    masks them)."""
    banned = lm.adapter.blocked_token_ids(lm.model.get_output_embeddings().weight.shape[0])
    ref = lm.model.generate(
        **collate([prompt], lm.adapter.tokenizer.pad_token_id),
        do_sample=False,
        max_new_tokens=steps,
        suppress_tokens=banned,
        return_dict_in_generate=True,
        output_logits=True,
    )
    ids = ref.sequences[0, prompt.length :]
    logits = torch.cat(ref.logits).float()
    logits[:, banned] = float("-inf")
    return ids, logits.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_backend_greedy_matches_generate_on_each_prompt_alone(loaded, images, family, monkeypatch):
    """vlrl's HF backend (left-padded prefill, each prompt's cache expanded to 2 rows, explicit
    decode positions) decodes what transformers' generate decodes for each prompt alone, token for
    token and with the same log-probs: for 10 tokens with no stop, and with a stop token that ends
    one prompt's rows first, so that the backend re-selects the live rows of the cache mid-decode."""
    lm = loaded[family]
    prompts = three_prompts(lm.adapter, images)
    monkeypatch.setattr(lm.model.generation_config, "eos_token_id", None)  # 10 tokens, whatever they are
    refs = [_greedy_reference(lm, p, 10) for p in prompts]
    groups = HFRolloutBackend(lm.model, lm.adapter, stop_token_ids=[-1]).generate(
        prompts, SamplingParams(2, 10, temperature=0)
    )
    # The stop token: the one that ends some prompt earliest while another prompt goes on.
    tokens = [ids.tolist() for ids, _ in refs]

    def ends(stop):  # each prompt's length when `stop` ends it
        return [ids.index(stop) + 1 if stop in ids else len(ids) for ids in tokens]

    stop = min(
        {t for ids in tokens for t in ids}, key=lambda t: (min(ends(t)) - max(ends(t)) >= 0, min(ends(t)))
    )
    end = ends(stop)
    if min(end) == max(end):
        return  # every prompt decodes alike (glm4v's micro model): no stop ends one of them first
    selected = []
    select = Prefix.select
    monkeypatch.setattr(
        Prefix, "select", lambda self, rows: selected.append(rows.tolist()) or select(self, rows)
    )
    stopped = HFRolloutBackend(lm.model, lm.adapter, stop_token_ids=[stop]).generate(
        prompts, SamplingParams(2, 10, temperature=0)
    )
    # the group expansion, then the drop of the first finished prompt's rows
    assert selected[:2] == [[0, 0, 1, 1, 2, 2], [r for r in range(6) if end[r // 2] > min(end)]]
    for p, (ids, logp) in enumerate(refs):
        for full, early in zip(groups[p], stopped[p], strict=True):
            assert full.token_ids.tolist() == ids.tolist()
            torch.testing.assert_close(full.logprobs, logp, atol=1e-4, rtol=0)
            assert early.token_ids.tolist() == ids[: end[p]].tolist()
            torch.testing.assert_close(early.logprobs, logp[: end[p]], atol=1e-4, rtol=0)
