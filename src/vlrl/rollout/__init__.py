"""Rollout backends: sample G completions per encoded prompt, with behaviour log-probs.

backend = make_backend("hf", model, adapter)                       # any name in BACKENDS
backend = make_backend(cfg.rollout.backend, model, adapter, cfg)  # options from a TrainConfig
groups = backend.generate(prompts, SamplingParams(group_size=8, max_new_tokens=256))
groups[p][g].token_ids, .logprobs, .text, .finish_reason
backend.sync_weights(model)                                       # after each policy update
"""

from vlrl.rollout.base import (
    BACKENDS,
    FINISH_REASONS,
    Completion,
    RolloutBackend,
    SamplingParams,
    make_backend,
)
from vlrl.rollout.hf import HFRolloutBackend

# Imported for their registration in BACKENDS: each joins under its name.
from vlrl.rollout import server, vllm_engine  # noqa: E402,F401  isort: skip

__all__ = [
    "BACKENDS",
    "FINISH_REASONS",
    "Completion",
    "HFRolloutBackend",
    "RolloutBackend",
    "SamplingParams",
    "make_backend",
]
