"""Log-probabilities of response tokens under a model, and token-budget micro-batches.

The trainer scores sampled responses teacher-forced, then takes the logits that predict each
response token. Two ways, same numbers:
- `grouped_response_logprobs`: each distinct prompt runs once (vision tower included) and its
  rows continue from its KV cache (`vlrl.models.prefix`): a group of G responses costs one
  prompt pass instead of G;
- `response_logprobs`: prompt + response in one right-padded pass per row; for gradient
  checkpointing, which recomputes layers and cannot keep a cache.
Logits are divided by the sampling temperature and vision placeholders are masked exactly as the
rollout did, so the recomputed log-probs describe the same distribution the tokens were drawn from.
"""

from __future__ import annotations

import torch
from torch import nn

from vlrl.algos import entropy_from_logits, logprobs_from_logits
from vlrl.models.adapters import ModelAdapter, VisionCache
from vlrl.models.batching import Encoded, collate
from vlrl.models.prefix import prefill
from vlrl.models.routing import Routes, aligned, span_positions

# Rows of logits upcast to float32 at a time: 1024 x a 152k vocabulary x 4 bytes = 0.6 GB per
# temporary, instead of 2.5 GB for a micro-batch of 8 x 512 response tokens.
CHUNK_ROWS = 1024


def token_budget_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive index groups whose padded size (rows x longest row) stays within `budget`.

    A single sequence longer than the budget still gets its own micro-batch.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        if current and max(longest, n) * (len(current) + 1) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


def response_mask(lengths: list[int], device: torch.device | str | None = None) -> torch.Tensor:
    """[B, T] with 1.0 on each row's first `lengths[i]` positions, T = max(lengths): which
    positions of a response log-prob matrix are real tokens rather than padding."""
    positions = torch.arange(max(lengths), device=device)
    return (positions[None, :] < torch.tensor(lengths, device=device)[:, None]).float()


def response_logprobs(
    model: nn.Module,
    sequences: list[Encoded],
    response_lengths: list[int],
    pad_id: int,
    temperature: float,
    blocked_ids: torch.Tensor,
    with_entropy: bool = False,
    adapter: ModelAdapter | None = None,
    vision: VisionCache | None = None,
    entropy_grad: bool = False,
    forward_kwargs: dict | None = None,
    routes: Routes | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs [b, T] (and entropies) of each sequence's response, T = longest response.

    `sequences[i]` is prompt + response with `prompt_length` marking the split; positions past a
    response's end are 0 and must be masked by the caller. With `vision` (the batch's images, in
    order) the vision tower is skipped and `adapter` places the cached outputs. `forward_kwargs`
    go to the model's forward (the policy asks MoE models for their routers' logits this way).
    `routes` (sequence i = `sequences[i]`, attached to `model`) replays and records MoE routes.
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(sequences, pad_id, padding_side="right").items()}
    inputs = batch if vision is None else adapter.cached_inputs(model, batch, vision)
    ids = batch["input_ids"]
    starts = torch.tensor([s.prompt_length for s in sequences], device=device)
    # Logits at position j predict token j + 1: the response's first token is predicted at
    # prompt_length - 1. Only positions from the earliest of those on get logits (the prompts'
    # own would be [b, L_prompt, V] of memory, most of it for image tokens).
    first = int(starts.min()) - 1
    b, L = ids.shape
    with aligned(routes, [[i] for i in range(b)], span_positions([0] * b, [s.length for s in sequences], L)):
        logits = model(
            **inputs, use_cache=False, logits_to_keep=L - first, **(forward_kwargs or {})
        ).logits  # [b, K, V]
    # Every kept position scored in place (the last, which predicts nothing, against a dummy
    # target), then each row's window picked from the [b, K] results: no [b, T, V] copy.
    targets = torch.cat([ids[:, first + 1 :], ids[:, :1]], dim=1)  # [b, K]
    logp, entropy = _scored(logits, targets, temperature, blocked_ids, with_entropy, entropy_grad)
    T = max(response_lengths)
    idx = (starts[:, None] - 1 - first + torch.arange(T, device=device)).clamp(max=logits.shape[1] - 2)
    return logp.gather(1, idx), None if entropy is None else entropy.gather(1, idx)


def grouped_response_logprobs(
    model: nn.Module,
    adapter: ModelAdapter,
    prompts: list[Encoded],
    row_prompt: list[int],
    responses: list[torch.Tensor],
    pad_id: int,
    temperature: float,
    blocked_ids: torch.Tensor,
    with_entropy: bool = False,
    vision: VisionCache | None = None,
    entropy_grad: bool = False,
    routes: Routes | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs [R, T] (and entropies) of R responses, T = longest response.

    Response r ([T_r] token ids) continues prompt `prompts[row_prompt[r]]`; each prompt runs once.
    Positions past a response's end are 0 and must be masked by the caller. `vision` (the
    prompts' images, in order) skips the vision tower. `routes` (sequence r = row r's prompt and
    response, attached to `model`) replays and records MoE routes: the prompt's from its first row.
    """
    lengths = [p.length for p in prompts]
    # The left-padded prefill serves every row of a prompt.
    owners = [[r for r, p in enumerate(row_prompt) if p == q] for q in range(len(prompts))]
    with aligned(routes, owners, span_positions([0] * len(prompts), lengths, max(lengths), left=True)):
        prefix = prefill(model, adapter, prompts, pad_id, vision)
    device = prefix.logits.device
    rows = prefix.select(torch.tensor(row_prompt, device=device))
    T = max(r.numel() for r in responses)
    ids = torch.full((len(responses), T), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(responses):
        ids[i, : r.numel()] = r.to(device)
        mask[i, : r.numel()] = 1
    starts = [lengths[p] for p in row_prompt]
    with aligned(
        routes,
        [[r] for r in range(len(responses))],
        span_positions(starts, [r.numel() for r in responses], T),
    ):
        logits = model(
            input_ids=ids,
            attention_mask=torch.cat([rows.attention_mask, mask.to(rows.attention_mask.dtype)], dim=1),
            position_ids=rows.positions(T),
            past_key_values=rows.cache,
            use_cache=True,
        ).logits  # [R, T, V]
    # The prompt's last logits predict response token 0; response position t predicts t + 1
    # (the last position predicts nothing: a dummy target, dropped). Scored in two parts, as a
    # [R, T, V] concatenation would copy the logits.
    first = _scored(rows.logits[:, None], ids[:, :1], temperature, blocked_ids, with_entropy, entropy_grad)
    rest = _scored(logits, ids.roll(-1, 1), temperature, blocked_ids, with_entropy, entropy_grad)
    logp = torch.cat([first[0], rest[0][:, :-1]], dim=1)
    entropy = torch.cat([first[1], rest[1][:, :-1]], dim=1) if with_entropy else None
    return logp, entropy


def _scored(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    blocked_ids: torch.Tensor,
    with_entropy: bool,
    entropy_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [b, T, V] predicting targets [b, T] -> log-probs [b, T] (and entropies) under the
    rollout's distribution: divided by the temperature, blocked ids masked.

    The entropy is differentiable only with `entropy_grad`: as a mere metric its graph would
    otherwise hold the logits for a backward pass that never uses it. Temperature and mask are
    applied per float32 chunk inside `vlrl.algos.tensor_ops`, never to a full [b, T, V] copy.
    """
    temperature = temperature if temperature > 0 else 1.0
    logp = logprobs_from_logits(logits, targets, CHUNK_ROWS, temperature, blocked_ids)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = entropy_from_logits(logits, CHUNK_ROWS, temperature, blocked_ids)
    return logp, entropy
