"""Routing replay (vlrl.models.routing) on the tiny MoE families: the hf rollout's recorded routes,
their replay in the policy's passes (shared-prefix and padded, micro-batches, image prompts), the
combine weights each family's adapter recomputes, and the gradient that reaches the router.

Rollout and training are made to route differently on purpose by a selection-only perturbation
of the rollout: noise on the logits its routers rank (the combine weights keep the family's
formula on the true logits, as GLM's correction bias does). Perturbing the router *weights*
instead would also change the replayed combine weights, and R3's log-probs could not equal the
rollout's exactly.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from vlrl.data.prompts import TEMPLATES
from vlrl.data.sample import Sample
from vlrl.models.loading import load_model
from vlrl.models.policy import Policy
from vlrl.models.routing import RouterHooks, Routes, route_mismatch
from vlrl.rollout import HFRolloutBackend, SamplingParams

MOE_FAMILIES = (
    "qwen3_vl_moe",
    "qwen3_5_moe",
    "glm4v_moe",
    "aria",
    "internvl_moe",
    "deepseek_vl2",
    "deepseek_vl2_mla",
)


def make_policy(lm, **kwargs) -> Policy:
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    blocked = torch.tensor(lm.adapter.blocked_token_ids(vocab))
    return Policy(
        lm.model, lm.adapter, pad_id=lm.adapter.tokenizer.pad_token_id, blocked_ids=blocked, **kwargs
    )


@contextmanager
def noisy_selection(lm, scale: float, seed: int = 0):
    """The routers rank logits + noise (scale x the logits' std) but weigh with the family's formula."""
    g = torch.Generator().manual_seed(seed)
    handles = []
    for _, router in lm.adapter.routers(lm.model):

        def hook(module, args, out):
            logits, weights, chosen = out
            noise = torch.randn(logits.shape, generator=g) * scale * logits.float().std()
            idx = torch.topk(logits.float() + noise, chosen.shape[1], dim=-1).indices
            return logits, lm.adapter.route_weights(module, logits, idx).to(weights.dtype), idx

        handles.append(router.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def rollout(lm, images, noise: float = 0.0):
    """2 prompts (one with an image, one text only) x 3 completions of up to 6 tokens, routes recorded."""
    samples = [
        Sample("a", "How many circles?", "1", images=[images["small"]]),
        Sample("b", "Name a colour, please.", "2"),
    ]
    prompts = [lm.adapter.encode(s, TEMPLATES["answer_only"]) for s in samples]
    backend = HFRolloutBackend(lm.model, lm.adapter)
    assert backend.record_routes(True)
    context = noisy_selection(lm, noise) if noise else contextmanager(lambda: (yield))()
    with context:
        groups = backend.generate(prompts, SamplingParams(3, 6, seed=0))
    flat = [c for g in groups for c in g]
    return prompts, [0, 0, 0, 1, 1, 1], flat


def score(policy, prompts, row_prompt, flat, rows=None, routes=None):
    rows = list(range(len(flat))) if rows is None else rows
    used = sorted({row_prompt[r] for r in rows})
    local = [used.index(row_prompt[r]) for r in rows]
    return policy.frozen_logprobs(
        [prompts[p] for p in used], local, [flat[r].token_ids for r in rows], 1.0, routes=routes
    )


def routes_for(prompts, row_prompt, flat, rows=None, replay=True, record=True) -> Routes:
    rows = list(range(len(flat))) if rows is None else rows
    lengths = [prompts[row_prompt[r]].length + flat[r].token_ids.numel() for r in rows]
    return Routes(lengths, [flat[r].routes for r in rows] if replay else None, record)


def deviation(logp, flat) -> float:
    return max(float((logp[i, : c.logprobs.numel()] - c.logprobs).abs().max()) for i, c in enumerate(flat))


@pytest.fixture(params=MOE_FAMILIES)
def moe(request, tiny_models):
    torch.manual_seed(0)
    return load_model(tiny_models[request.param])


def test_replaying_a_routers_own_choice_changes_nothing(moe):
    """The adapter's route_weights is the family router's own formula: forcing the experts it
    chose gives the same logits (the hooks return the tuple the MoE block expects)."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad(), RouterHooks(moe.model, moe.adapter) as hooks:
        free = moe.model(input_ids=ids).logits
        chosen = hooks.take()
        hooks.replay = chosen.long()
        forced = moe.model(input_ids=ids).logits
        assert torch.equal(hooks.take(), chosen)
    assert chosen.shape == (8, len(moe.adapter.routers(moe.model)), chosen.shape[2])
    torch.testing.assert_close(forced, free, atol=1e-6, rtol=0)


def test_hf_rollout_records_prompt_and_fed_response_routes(moe, images):
    prompts, row_prompt, flat = rollout(moe, images)
    layers = len(moe.adapter.routers(moe.model))
    for r, c in enumerate(flat):
        n = prompts[row_prompt[r]].length + c.token_ids.numel()
        # every prompt token and every fed response token: all but (usually) the last one
        assert c.routes.dtype == torch.int16 and c.routes.shape[1] == layers
        assert n - 1 <= c.routes.shape[0] <= n
    # a group's rows share one prefill: the same prompt routes
    P = prompts[0].length
    assert torch.equal(flat[0].routes[:P], flat[2].routes[:P])


def test_r3_replay_gives_the_rollouts_logprobs_and_no_mismatch(moe, images):
    prompts, row_prompt, flat = rollout(moe, images, noise=1.0)
    policy = make_policy(moe)
    # Replay off: the training forward routes by itself, unlike the (perturbed) rollout.
    own = routes_for(prompts, row_prompt, flat, replay=False)
    free = score(policy, prompts, row_prompt, flat, routes=own)
    differing, total = route_mismatch([c.routes for c in flat], own.used)
    assert differing > 0 and total > 0
    assert deviation(free, flat) > 1e-3
    # R3: the rollout's routes replayed.
    replayed = routes_for(prompts, row_prompt, flat)
    logp = score(policy, prompts, row_prompt, flat, routes=replayed)
    assert deviation(logp, flat) < 1e-5
    assert route_mismatch([c.routes for c in flat], replayed.used) == (0, total)
    # what the live routers would pick is still measurable under replay
    assert route_mismatch([c.routes for c in flat], replayed.chosen)[0] > 0


def test_replay_is_the_same_on_padded_passes_and_in_micro_batches(moe, images):
    prompts, row_prompt, flat = rollout(moe, images, noise=1.0)
    shared = score(make_policy(moe), prompts, row_prompt, flat, routes=routes_for(prompts, row_prompt, flat))
    padded = score(
        make_policy(moe, shared_prefix=False),
        prompts,
        row_prompt,
        flat,
        routes=routes_for(prompts, row_prompt, flat),
    )
    mask = torch.zeros_like(shared, dtype=torch.bool)
    for i, c in enumerate(flat):
        mask[i, : c.token_ids.numel()] = True
    torch.testing.assert_close(padded[mask], shared[mask], atol=1e-5, rtol=0)
    # micro-batches [0, 1], [2, 3, 4] (across the two prompts), [5]
    for rows in ([0, 1], [2, 3, 4], [5]):
        part = score(
            make_policy(moe),
            prompts,
            row_prompt,
            flat,
            rows,
            routes=routes_for(prompts, row_prompt, flat, rows),
        )
        T = part.shape[1]
        torch.testing.assert_close(
            part[mask[rows][:, :T]], shared[rows][:, :T][mask[rows][:, :T]], atol=1e-5, rtol=0
        )


def test_gradient_reaches_the_router_through_replayed_weights(tiny_models):
    """One Qwen3-VL-MoE layer under replay against the layer computed by hand from the router
    logits, the replayed experts and the expert weights: same output, same router gradient."""
    torch.manual_seed(0)
    lm = load_model(tiny_models["qwen3_vl_moe"], experts_implementation="eager")
    block = lm.model.model.language_model.layers[0].mlp
    router, experts = block.gate, block.experts
    N, H = 7, router.weight.shape[1]
    E, k = router.num_experts, router.top_k
    x = torch.randn(1, N, H)
    idx = torch.stack([torch.randperm(E)[:k] for _ in range(N)])  # [N, k], not the router's choice
    layers = len(lm.adapter.routers(lm.model))
    g = torch.randn(1, N, H)

    with RouterHooks(lm.model, lm.adapter) as hooks:
        hooks.replay = idx[:, None, :].expand(N, layers, k)
        out = block(x)
    (out * g).sum().backward()
    grad = router.weight.grad.clone()
    router.weight.grad = None

    # by hand: softmax over all experts, gather the replayed ones, renormalise; SwiGLU experts
    W = router.weight.detach().clone().requires_grad_(True)
    h = x[0]
    w = torch.softmax(h @ W.T, dim=-1).gather(1, idx)
    w = w / w.sum(-1, keepdim=True)
    rows = []
    for t in range(N):
        y = 0
        for j in range(k):
            e = int(idx[t, j])
            gate, up = (experts.gate_up_proj[e] @ h[t]).chunk(2)
            y = y + w[t, j] * (experts.down_proj[e] @ (torch.nn.functional.silu(gate) * up))
        rows.append(y)
    ref = torch.stack(rows)[None]
    (ref * g).sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, W.grad, atol=1e-5, rtol=1e-4)
