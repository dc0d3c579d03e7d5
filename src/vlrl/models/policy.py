"""The policy: the trained model as the RL update sees it.

The trainer keeps the loop (which rows, which losses, when to step); it asks the policy for
numbers about responses. The policy owns what depends on the model:
- the model itself (peft-wrapped or FSDP-sharded or neither) and its family's adapter;
- the reference for the KL term: a frozen copy, LoRA's base weights (adapters disabled), or none;
- how responses are scored: from one shared pass per prompt (`grouped_response_logprobs`) when
  the family declares it can continue a cache row by row and gradient checkpointing is off, else
  by padded full passes (`response_logprobs`); both give the same numbers;
- the vision cache: while the family's vision groups are frozen, each prompt's images go through
  the vision tower once per step and every later pass reuses the output;
- model-side losses: the router load-balancing loss of Mixture-of-Experts models, added to the
  policy loss when `model.router_aux_loss_coef` > 0 (the update then runs padded passes:
  transformers computes that loss only for a pass without cache, whose attention mask covers
  exactly the tokens routed);
- the weights in checkpoint layout (`export_weights`), the one export path of checkpoints and
  engine syncs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlrl.models.adapters import ModelAdapter, VisionCache
from vlrl.models.adapters.base import unwrap
from vlrl.models.batching import Encoded
from vlrl.models.export import export_weights
from vlrl.models.logprobs import grouped_response_logprobs, response_logprobs
from vlrl.models.routing import Routes


@dataclass
class Scores:
    """Per-token log-probs [R, T] of R responses (positions past a response's end are 0), their
    entropies [R, T] when asked for, and the model-side loss of the passes that computed them
    (a scalar, None when the model has none or its coefficient is 0)."""

    logprobs: Tensor
    entropy: Tensor | None = None
    model_loss: Tensor | None = None


class Policy:
    def __init__(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        *,
        pad_id: int,
        blocked_ids: Tensor,
        reference: nn.Module | None = None,
        lora_reference: bool = False,
        shared_prefix: bool = True,
        reuse_vision: bool = False,
        router_aux_loss_coef: float = 0.0,
    ):
        """`reference`: a frozen model for the KL term; `lora_reference`: the reference is the
        policy with its LoRA adapters disabled. `shared_prefix` and `reuse_vision` are what the
        run allows (gradient checkpointing forbids the first, sharding the second); the family's
        capability decides too."""
        if router_aux_loss_coef and not adapter.router_loss:
            raise ValueError(
                f"model.router_aux_loss_coef={router_aux_loss_coef}: transformers' {adapter.family} model "
                "computes no router load-balancing loss; set model.router_aux_loss_coef=0"
            )
        self.model = model
        self.adapter = adapter
        self.pad_id = pad_id
        self.blocked_ids = blocked_ids
        self.reference = reference
        self.lora_reference = lora_reference
        self.shared_prefix = shared_prefix and adapter.shared_prefix
        self.reuse_vision = reuse_vision
        self.router_aux_loss_coef = router_aux_loss_coef

    @property
    def has_reference(self) -> bool:
        return self.reference is not None or self.lora_reference

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- vision ---------------------------------------------------------------------------
    @torch.no_grad()
    def vision_caches(self, prompts: list[Encoded]) -> list[VisionCache | None] | None:
        """Each prompt's vision cache from one vision-tower pass per prompt (None for a prompt
        without images) — or None when the vision groups train and every pass must run the tower."""
        if not self.reuse_vision:
            return None
        device = self.device
        return [
            self.adapter.vision_cache(self.model, {k: v.to(device) for k, v in p.vision.items()})
            if p.vision
            else None
            for p in prompts
        ]

    # ---- scoring ----------------------------------------------------------------------------
    def score(
        self,
        prompts: list[Encoded],
        row_prompt: list[int],
        responses: list[Tensor],
        temperature: float,
        vision: list[VisionCache | None] | None = None,
        with_entropy: bool = False,
        entropy_grad: bool = False,
        routes: Routes | None = None,
    ) -> Scores:
        """Scores of responses ([T_r] token ids) continuing `prompts[row_prompt[r]]`, under
        autograd and in training mode: the update's pass. `vision`: per prompt, from
        `vision_caches`, or None to run the vision tower. `routes` (sequence r = row r's prompt
        + response): MoE routes to replay and / or record (`vlrl.models.routing`)."""
        self.model.train()
        with self._model_losses() as losses:
            logp, entropy = self._logprobs(
                self.model,
                prompts,
                row_prompt,
                responses,
                temperature,
                vision,
                with_entropy,
                entropy_grad,
                router_loss=bool(self.router_aux_loss_coef),
                routes=routes,
            )
        return Scores(logp, entropy, self._model_loss(losses))

    @torch.no_grad()
    def frozen_logprobs(
        self,
        prompts: list[Encoded],
        row_prompt: list[int],
        responses: list[Tensor],
        temperature: float,
        vision: list[VisionCache | None] | None = None,
        reference: bool = False,
        routes: Routes | None = None,
    ) -> Tensor:
        """[R, T] log-probs without gradient, in eval mode: the old policy's (PPO's ratio
        denominator) or, with `reference`, the reference model's (which routes by itself: no
        `routes` with it)."""
        if reference and routes is not None:
            raise ValueError("routing replay applies to the policy, not to the reference model")
        if reference and not self.has_reference:
            raise ValueError("this policy has no reference model (algo.kl_beta is 0)")
        model = self.reference if reference and self.reference is not None else self.model
        model.eval()
        # LoRA: the base weights are the reference.
        context = self.model.disable_adapter() if reference and self.lora_reference else nullcontext()
        with context:
            logp, _ = self._logprobs(
                model, prompts, row_prompt, responses, temperature, vision, False, False, routes=routes
            )
        return logp

    def _logprobs(
        self,
        model,
        prompts,
        row_prompt,
        responses,
        temperature,
        vision,
        with_entropy,
        entropy_grad,
        router_loss=False,
        routes=None,
    ):
        common = dict(
            pad_id=self.pad_id,
            temperature=temperature,
            blocked_ids=self.blocked_ids,
            with_entropy=with_entropy,
            entropy_grad=entropy_grad,
        )
        hooks = routes.attach(model, self.adapter) if routes is not None else nullcontext()
        with hooks:
            if self.shared_prefix and not router_loss:
                return grouped_response_logprobs(
                    model,
                    self.adapter,
                    prompts,
                    row_prompt,
                    responses,
                    vision=VisionCache.concat(vision) if vision else None,
                    routes=routes,
                    **common,
                )
            return response_logprobs(
                model,
                [prompts[p].with_response(r) for p, r in zip(row_prompt, responses, strict=True)],
                [r.numel() for r in responses],
                adapter=self.adapter,
                vision=VisionCache.concat([vision[p] for p in row_prompt]) if vision else None,
                forward_kwargs={"output_router_logits": True} if router_loss else None,
                routes=routes,
                **common,
            )

    # ---- model-side losses ----------------------------------------------------------------
    @contextmanager
    def _model_losses(self) -> Iterator[list[Tensor]]:
        """Collect the router load-balancing loss of every forward pass run inside (transformers
        returns it as `aux_loss` when the forward is asked for `output_router_logits`)."""
        losses: list[Tensor] = []
        if not self.router_aux_loss_coef:
            yield losses
            return

        def keep(module, args, output):
            aux = getattr(output, "aux_loss", None)
            if aux is not None:
                losses.append(aux)

        handle = unwrap(self.model).register_forward_hook(keep)
        try:
            yield losses
        finally:
            handle.remove()

    def _model_loss(self, losses: list[Tensor]) -> Tensor | None:
        """The coefficient times the load-balancing loss of the pass; None without a coefficient."""
        if not self.router_aux_loss_coef:
            return None
        return self.router_aux_loss_coef * torch.stack([x.float() for x in losses]).mean()

    # ---- weights ----------------------------------------------------------------------------
    def export_weights(self) -> Iterator[tuple[str, Tensor]]:
        """(name, tensor) in checkpoint layout, as `save_pretrained` writes them (see
        `vlrl.models.export`): what an inference engine loads."""
        return export_weights(self.model)
