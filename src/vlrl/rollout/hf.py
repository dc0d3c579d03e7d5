"""Rollouts with the training model itself (transformers), sharing each prompt's prefix across its group.

GRPO samples G completions of the same prompt. `model.generate(num_return_sequences=G)` copies
each prompt G times before the forward pass, so the vision tower and the prefill run G times on
identical inputs. This loop instead:

1. left-pads the P prompts into one batch and prefills it once ([P, L] rows, one vision pass);
2. repeats the KV cache, attention mask and last logits G times along the batch
   (rows p*G .. p*G+G-1 belong to prompt p);
3. decodes the P*G rows one token per step with explicit position ids, so no model-specific
   position logic (Qwen's M-RoPE `rope_deltas` state) is recomputed from the decode inputs.

Steps 1-2 and the position rule are `vlrl.models.prefix`, which the policy update shares.
Asked to (`record_routes`), it records the experts every fed token used in every MoE layer: the
prefill's once per prompt, each row's decode steps, joined per completion in sequence order.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn

from vlrl.models.adapters import ModelAdapter
from vlrl.models.batching import Encoded
from vlrl.models.prefix import Prefix, prefill
from vlrl.models.routing import ROUTE_DTYPE, RouterHooks
from vlrl.rollout.base import Completion, RolloutBackend, SamplingParams, register_backend
from vlrl.rollout.common import default_stop_ids
from vlrl.rollout.sampling import row_uniforms, sample_next


@register_backend("hf")
class HFRolloutBackend(RolloutBackend):
    """Samples from `model` (shared with the trainer) with a shared-prefix decoding loop.

    `stop_token_ids` end a completion (kept as its last token); by default the generation
    config's EOS ids plus the tokenizer's. `max_batch_rows` bounds the P*G rows decoded at once:
    prompts go in chunks of `max_batch_rows // group_size` (a group is never split, since its
    rows share one prefill). Behaviour log-probs are those of `vlrl.rollout.sampling.sample_next`:
    log_softmax(logits / temperature) with placeholders masked, before top-k / top-p.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        stop_token_ids: list[int] | None = None,
        max_batch_rows: int | None = None,
    ):
        self.model = model
        self.adapter = adapter
        self.tokenizer = adapter.tokenizer
        self.stop_token_ids = (
            default_stop_ids(model, self.tokenizer) if stop_token_ids is None else stop_token_ids
        )
        self.max_batch_rows = max_batch_rows
        # Finished rows keep feeding this token (masked out); any id in the vocabulary would do.
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_token_ids[0]
        )
        self.routes = False

    def record_routes(self, on: bool) -> bool:
        """Record each token's MoE routes (`Completion.routes`): the model must have routers."""
        if on:
            RouterHooks(self.model, self.adapter)  # fails for a dense model
        self.routes = on
        return on

    def sync_weights(self, model: nn.Module) -> None:
        """Nothing to do when sampling from the trainer's own module; a replica of an FSDP2-sharded
        policy gets its gathered weights (a collective: every rank calls this)."""
        if model is self.model:
            return
        from vlrl.distributed.fsdp import full_state_dict

        self.model.load_state_dict(full_state_dict(model))

    def generate(self, prompts: list[Encoded], params: SamplingParams) -> list[list[Completion]]:
        """`params.group_size` completions per prompt, result[p][g]."""
        per_chunk = len(prompts)
        if self.max_batch_rows is not None:
            if params.group_size > self.max_batch_rows:
                raise ValueError(
                    f"group_size {params.group_size} exceeds max_batch_rows {self.max_batch_rows}: "
                    "a group's rows share one prefill and cannot be split"
                )
            per_chunk = self.max_batch_rows // params.group_size
        out: list[list[Completion]] = []
        with torch.no_grad(), _eval_mode(self.model):
            for start in range(0, len(prompts), per_chunk):
                out += self._generate_chunk(
                    prompts[start : start + per_chunk], params, params.first_prompt + start
                )
        return out

    def _generate_chunk(
        self, prompts: list[Encoded], params: SamplingParams, first: int
    ) -> list[list[Completion]]:
        """Prefill `prompts` (global indices first..) once, expand to P*G rows, decode; result[p][g]."""
        G = params.group_size
        hooks = RouterHooks(self.model, self.adapter) if self.routes else None
        with hooks or nullcontext():
            prefix = prefill(self.model, self.adapter, prompts, self.pad_id)
            # Each prompt's routes: the real (unpadded, left-padded) cells of its prefill row.
            mask = prefix.attention_mask.bool().cpu()
            prompt_routes = (
                hooks.take().cpu().unflatten(0, mask.shape) if hooks else None
            )  # [P, L, layers, k]
            # Rows p*G .. p*G+G-1 continue prompt p.
            rows = prefix.select(torch.arange(len(prompts), device=prefix.logits.device).repeat_interleave(G))
            rows.reserve(params.max_new_tokens)
            row_ids = torch.arange(first * G, (first + len(prompts)) * G, device=prefix.logits.device)
            tokens, logprobs, alive, routes, fed = self._decode(rows, params, row_ids, hooks)
        completions = []
        for r, (t, lp, a) in enumerate(zip(tokens, logprobs, alive, strict=True)):
            completion = self._completion(t, lp, a)
            if hooks:
                p = r // G
                fed_routes = routes[r, : int(fed[r].sum())] if routes is not None else prompt_routes[p, :0]
                completion.routes = torch.cat([prompt_routes[p][mask[p]], fed_routes])
            completions.append(completion)
        return [completions[p * G : (p + 1) * G] for p in range(len(prompts))]

    def _decode(
        self, prefix: Prefix, params: SamplingParams, row_ids: Tensor, hooks: RouterHooks | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        """Sample up to `max_new_tokens` per row from the prefilled state (R rows).

        row_ids [R]: each row's global id, keying its draws when `params.seed` is set ->
        tokens [R, T] long, logprobs [R, T] float32, alive [R, T] bool (real response tokens),
        with `hooks` the routes [R, T, layers, k] (else None) of the tokens fed back, and
        fed [R, T] bool: which response tokens were fed back (all real ones but, often, the last).

        Finished rows keep decoding a masked-out pad until a quarter of the batch has finished;
        then they are dropped from the batch (cache included). Seeded draws are keyed by row id,
        so dropping rows never changes what the others sample.
        """
        logits, attention_mask = prefix.logits, prefix.attention_mask
        device = logits.device
        R, T = logits.shape[0], params.max_new_tokens
        banned = self._banned_tokens(logits.shape[-1], device)
        stop_ids = torch.tensor(self.stop_token_ids, device=device)
        tokens = torch.full((R, T), self.pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros(R, T, device=device)
        alive = torch.zeros(R, T, dtype=torch.bool, device=device)
        rows = torch.arange(R, device=device)  # the output row of each batch row
        done = torch.zeros(R, dtype=torch.bool, device=device)
        fed = torch.zeros(R, T, dtype=torch.bool)
        routes = None
        for t in range(T):
            uniforms = None if params.seed is None else row_uniforms(params.seed, row_ids[rows], t)
            token, logprob = sample_next(logits, banned, params, uniforms)
            live = ~done
            tokens[rows[live], t] = token[live]
            logprobs[rows[live], t] = logprob[live].float()
            alive[rows[live], t] = True
            done = done | torch.isin(token, stop_ids)
            if t == T - 1 or bool(done.all()):
                break
            if 4 * int(done.sum()) >= len(rows):
                keep = (~done).nonzero().squeeze(1)
                prefix = prefix.select(keep)
                rows, done, live, token = rows[keep], done[keep], live[keep], token[keep]
                attention_mask = attention_mask[keep]
            # A row that has finished feeds a masked-out pad; every row's queries attend only to its own cache.
            token = token.masked_fill(~live, self.pad_id)
            attention_mask = torch.cat([attention_mask, live[:, None].to(attention_mask.dtype)], dim=1)
            logits = self.model(
                input_ids=token[:, None],
                attention_mask=attention_mask,
                position_ids=prefix.positions(1, offset=t),
                past_key_values=prefix.cache,
                use_cache=True,
            ).logits[:, -1]
            if hooks is not None:
                used = hooks.take().cpu()  # [rows, layers, k]: token t of each row in the batch
                if routes is None:
                    routes = torch.zeros(R, T, *used.shape[1:], dtype=ROUTE_DTYPE)
                fed_rows = rows[live].cpu()
                routes[fed_rows, t] = used[live.cpu()]
                fed[fed_rows, t] = True
        return tokens, logprobs, alive, routes, fed

    def _banned_tokens(self, vocab: int, device: torch.device) -> Tensor:
        """[vocab] bool: vision placeholders and embedding rows beyond the tokenizer, never sampled.

        A sampled placeholder would break the image-token count when the sequence is re-encoded
        for training; untrained (or random tiny) models do give them probability.
        """
        banned = torch.zeros(vocab, dtype=torch.bool, device=device)
        banned[self.adapter.blocked_token_ids(vocab)] = True
        return banned

    def _completion(self, tokens: Tensor, logprobs: Tensor, alive: Tensor) -> Completion:
        """One row's real tokens: tokens, logprobs, alive [T] -> Completion (on the CPU)."""
        n = int(alive.sum())
        ids = tokens[:n].cpu()
        stopped = n > 0 and int(ids[-1]) in self.stop_token_ids
        return Completion(
            token_ids=ids,
            logprobs=logprobs[:n].float().cpu(),
            text=self.tokenizer.decode(ids, skip_special_tokens=True),
            finish_reason="stop" if stopped else "length",
        )


@contextmanager
def _eval_mode(model: nn.Module):
    """Run with dropout off, then restore each submodule's mode (a frozen tower may stay in eval)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training
