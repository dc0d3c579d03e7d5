"""In-training evaluation: greedy answers on a held-out set, scored by the training rewards.

Using the reward's own answer extractor keeps "accuracy" meaning the same thing in training
curves and in evaluation.
"""

from __future__ import annotations

from vlrl.data import Sample
from vlrl.data.prompts import Template
from vlrl.models.adapters import ModelAdapter
from vlrl.rewards import REWARDS
from vlrl.rollout.base import RolloutBackend, SamplingParams

EVAL_BATCH = 128


def evaluate(
    backend: RolloutBackend,
    adapter: ModelAdapter,
    template: Template,
    samples: list[Sample],
    max_new_tokens: int,
) -> dict[str, float]:
    """acc, format (share of well-formed answers) and mean response length over `samples`."""
    params = SamplingParams(group_size=1, max_new_tokens=max_new_tokens, temperature=0.0)
    texts, lengths = [], []
    for start in range(0, len(samples), EVAL_BATCH):
        chunk = samples[start : start + EVAL_BATCH]
        groups = backend.generate([adapter.encode(s, template) for s in chunk], params)
        texts += [g[0].text for g in groups]
        lengths += [g[0].token_ids.numel() for g in groups]
    fields = {k: [s.fields()[k] for s in samples] for k in ("answer", "choices", "task")}
    fmt_name = "caption_format" if template.name == "caption_think_answer" else "format"
    acc = [a for a in REWARDS["accuracy"](texts, **fields) if a is not None]
    fmt = REWARDS[fmt_name](texts, **fields)
    return {
        "acc": sum(acc) / max(len(acc), 1),
        "format": sum(f or 0.0 for f in fmt) / len(texts),
        "response_length": sum(lengths) / len(lengths),
    }
