"""Evaluation during training: greedy accuracy, pass@k from samples, and per-sample records.

`acc` is greedy
answers scored with the training accuracy reward's own extractor and matcher (the "math_verify"
benchmark), so "accuracy" is the same thing in training curves and in evaluation. With n > 1,
n answers per question are also sampled at temperature 1.0 (the policy's own distribution)
with a fixed seed, so that two evaluations differ only through the model, and pass@k is
estimated from them (Chen et al. 2021). The per-sample records feed the training-dynamics
metrics (which questions flip from wrong to right, how lengths move).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlrl.data.prompts import Template
from vlrl.data.sample import Sample
from vlrl.evaluation.benchmarks import get_benchmark
from vlrl.evaluation.records import Record, accuracy_summary, mean_pass_at_k
from vlrl.evaluation.runner import check_k, generate_records
from vlrl.models.adapters import ModelAdapter
from vlrl.rewards import REWARDS
from vlrl.rollout.base import RolloutBackend, SamplingParams

FORMAT_REWARDS = {"caption_think_answer": "caption_format"}
"""The format reward that matches a prompt template's layout; "format" for any other template."""

EVAL_SEED = 0


def _record(greedy: Record, sampled: Record | None) -> dict[str, Any]:
    """One question's greedy answer and, when sampled, its n answers; `correct` None when unscored."""
    out: dict[str, Any] = {
        "id": greedy.sample.id,
        "text": greedy.texts[0],
        "correct": greedy.correct[0] if greedy.scored else None,
        "length": greedy.lengths[0],
        "finish_reason": greedy.finish_reasons[0],
    }
    if sampled is not None:
        out |= {
            "sampled_texts": sampled.texts,
            "sampled_correct": sampled.correct if sampled.scored else None,
            "sampled_lengths": sampled.lengths,
        }
    return out


def evaluate_during_training(
    backend: RolloutBackend,
    adapter: ModelAdapter,
    template: Template,
    samples: list[Sample],
    max_new_tokens: int,
    n: int = 1,
    k_list: Sequence[int] = (1,),
    benchmark: str = "math_verify",
    batch_size: int = 32,
    seed: int = EVAL_SEED,
) -> dict[str, Any]:
    """Scalar metrics on held-out `samples`, and under "records" one dict per question.

    acc: greedy accuracy (scored questions only); format: share of greedy answers in the
    template's layout; response_length: mean greedy tokens; when n > 1, pass@k for each k and
    sampled_format, the share of the sampled answers in the template's layout.
    `batch_size` bounds the rows generated at once (prompts x completions).
    """
    bench = get_benchmark(benchmark)
    greedy_params = SamplingParams(group_size=1, max_new_tokens=max_new_tokens, temperature=0.0)
    greedy = generate_records(backend, adapter, template, samples, bench, greedy_params, batch_size)
    texts = [r.texts[0] for r in greedy]
    fmt = REWARDS[FORMAT_REWARDS.get(template.name, "format")](texts)
    metrics: dict[str, Any] = {
        "acc": accuracy_summary(greedy)["accuracy"],
        "format": sum(f or 0.0 for f in fmt) / max(len(texts), 1),
        "response_length": sum(r.lengths[0] for r in greedy) / max(len(greedy), 1),
    }
    sampled: list[Record | None] = [None] * len(greedy)
    if n > 1:
        check_k(k_list, n)
        params = SamplingParams(group_size=n, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
        drawn = generate_records(backend, adapter, template, samples, bench, params, max(1, batch_size // n))
        metrics |= {f"pass@{k}": mean_pass_at_k(drawn, k) for k in k_list}
        drawn_fmt = REWARDS[FORMAT_REWARDS.get(template.name, "format")]([t for r in drawn for t in r.texts])
        metrics["sampled_format"] = sum(f or 0.0 for f in drawn_fmt) / max(len(drawn_fmt), 1)
        sampled = list(drawn)
    metrics["records"] = [_record(g, s) for g, s in zip(greedy, sampled, strict=True)]
    return metrics
