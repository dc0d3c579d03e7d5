"""The rollout interface: prompts in, G sampled completions per prompt out.

Every backend (transformers, a colocated vLLM engine, a vLLM or SGLang server) takes already-encoded
prompts (`Encoded`, as the adapter builds them) and returns, per completion, the sampled token
ids with their behaviour log-probs (the probabilities the tokens were drawn with), so the trainer
never re-tokenises text. The update recomputes log-probs with the training model; the behaviour
log-probs are there for diagnostics and for correcting a rollout/training mismatch.

Backends join `BACKENDS` by name with `@register_backend(name)`; every backend is constructed as
`Backend(model, adapter, **options)`. A training run passes its whole config to `make_backend`,
and each backend reads its options from it in `config_options` (the `vllm` backend from
`rollout.vllm`, the `server` backend from `rollout.server`), so the trainer names no backend.
A backend wrapping an optional engine (vLLM) imports the engine only when constructed, so only
the runs that choose it need it installed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vlrl.models.adapters import ModelAdapter
from vlrl.models.batching import Encoded

if TYPE_CHECKING:
    from vlrl.config import TrainConfig

FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True)
class SamplingParams:
    """How each prompt's group is sampled.

    `temperature` 0 means greedy decoding; `top_k` 0 and `top_p` 1 switch those filters off.
    With `seed` set, the draws of completion g of prompt p depend only on (seed, `first_prompt`
    + p, g): a rerun gives the same samples, and so does a data-parallel rank that generates
    prompts first_prompt.. of the same step's global batch.
    """

    group_size: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    first_prompt: int = 0

    def __post_init__(self):
        checks = {
            "group_size": self.group_size >= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "temperature": self.temperature >= 0,
            "top_p": 0 < self.top_p <= 1,
            "top_k": self.top_k >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"sampling parameter {name}={getattr(self, name)!r} is out of range")


@dataclass
class Completion:
    """One sampled response.

    `token_ids` [T] long: the response tokens, ending with the stop token when one was sampled;
    `logprobs` [T] float32: the behaviour log-prob of each of them (see the backend for which
    distribution); `text`: the tokens decoded without special tokens; `finish_reason`: "stop"
    when a stop token was sampled, "length" when `max_new_tokens` ran out; `routes`, when the
    backend records them (`RolloutBackend.record_routes`): [n, layers, k] int16, the experts each
    token the sampler fed used in each MoE layer, in sequence order (the prompt's tokens, then
    the response's; n is the prompt length + the response tokens fed back, the last one not
    always: it predicts nothing).
    """

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    text: str
    finish_reason: str
    routes: torch.Tensor | None = None


class RolloutBackend(ABC):
    """Samples groups of completions from the current policy."""

    @classmethod
    def config_options(cls, cfg: TrainConfig) -> dict[str, Any]:
        """The constructor's keyword arguments that a training config sets (its own section and the
        few common values it needs: model path, dtype, seed); none by default."""
        return {}

    @abstractmethod
    def generate(self, prompts: list[Encoded], params: SamplingParams) -> list[list[Completion]]:
        """`params.group_size` completions for each prompt: result[p][g], in prompt order."""

    def record_routes(self, on: bool) -> bool:
        """Attach (or stop attaching) each token's MoE routes to the completions (`Completion.routes`,
        what routing replay R3 replays); returns whether this backend will. None records by default."""
        return False

    @abstractmethod
    def sync_weights(self, model: nn.Module) -> None:
        """Make the backend sample from `model`'s current weights (called after each policy update)."""


BACKENDS: dict[str, type[RolloutBackend]] = {}


def register_backend(name: str) -> Callable[[type[RolloutBackend]], type[RolloutBackend]]:
    """Class decorator: make a backend available to `make_backend` under `name`.

    A backend's module registers itself when imported (`vlrl.rollout` imports them all); one that
    wraps an optional engine imports the engine only when constructed.
    """

    def register(cls: type[RolloutBackend]) -> type[RolloutBackend]:
        if name in BACKENDS:
            raise ValueError(
                f"rollout backend {name!r} is registered twice ({BACKENDS[name].__name__}, {cls.__name__})"
            )
        BACKENDS[name] = cls
        return cls

    return register


def make_backend(
    name: str, model: nn.Module, adapter: ModelAdapter, cfg: TrainConfig | None = None, **options
) -> RolloutBackend:
    """The backend registered as `name`, configured by `cfg` (a training config; see
    `RolloutBackend.config_options`) and `options` (which win over it); an unknown name fails
    listing the valid ones."""
    if name not in BACKENDS:
        raise ValueError(f"unknown rollout backend {name!r}; valid: {', '.join(sorted(BACKENDS))}")
    backend = BACKENDS[name]
    configured = {} if cfg is None else backend.config_options(cfg)
    return backend(model, adapter, **(configured | options))
