"""Evaluation during training: greedy accuracy, pass@k from samples, flips, and per-sample records.

`acc` is greedy answers scored by the set's convention (`eval_benchmark`): for text answers the
training accuracy reward's own extractor and matcher (the "math_verify" benchmark), so "accuracy"
is the same thing in training curves and in evaluation; for box answers, which no text convention
can score, the box conventions of `vlrl eval` (Acc@IoU0.5, or per-image mAP for labelled objects).
With n > 1, n answers per question are also sampled at temperature 1.0 (the policy's own
distribution) with a fixed seed, so that two evaluations differ only through the model, and pass@k
is estimated from them (Chen et al. 2021). Given the previous evaluation's records, the share of
questions that flipped from wrong to right and from right to wrong since then is logged too; the
records also feed MAYE's training-dynamics metrics (how lengths and reflection move).
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
from vlrl.rewards.boxes import truth_boxes
from vlrl.rollout.base import RolloutBackend, SamplingParams

FORMAT_REWARDS = {"caption_think_answer": "caption_format"}
"""The format reward that matches a prompt template's layout; "format" for any other template."""

EVAL_SEED = 0

BOX_BENCHMARKS = ("rec", "detection")
"""The conventions that score box answers; the others score text answers."""


def eval_benchmark(samples: Sequence[Sample], requested: str, set_name: str) -> str:
    """The convention that scores data.eval set `set_name`; refuses a set no convention can score.

    Text answers take `requested` (train.eval_benchmark). Box answers, which a text convention
    cannot score, take `requested` when it is a box convention, else "detection" (per-image mAP)
    when the objects carry labels and "rec" (Acc@IoU0.5) when they are plain boxes or `[]`, as
    `vlrl eval --benchmark` would score such data. A set mixing box and text answers, or text
    answers under a box convention, is an error naming the set and a sample.
    """
    get_benchmark(requested)
    truths = [truth_boxes(s.answer) for s in samples]
    boxed = [s for s, t in zip(samples, truths, strict=True) if t is not None]
    text = [s for s, t in zip(samples, truths, strict=True) if t is None]
    where = f"data.eval set {set_name!r}"
    if boxed and text:
        raise ValueError(
            f"{where} mixes box answers (sample {boxed[0].id!r}) and text answers (sample {text[0].id!r}), "
            "and no one convention scores both: split it into two data.eval sets"
        )
    if text and requested in BOX_BENCHMARKS:
        raise ValueError(
            f"{where}: train.eval_benchmark={requested} scores boxes, but sample {text[0].id!r} has the text "
            f"answer {text[0].answer!r}: use a text convention such as math_verify"
        )
    if text or requested in BOX_BENCHMARKS:
        return requested
    labelled = any(label is not None for t in truths for _, label in t)
    return "detection" if labelled else "rec"


def flips(previous: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Of the questions scored in both evaluations, the share that went from wrong to right
    (`flip_to_correct`) and from right to wrong (`flip_to_wrong`); {} when there are none, so
    that a curve shows no point rather than a false 0. Records are matched by id.

    >>> before = [{"id": "a", "correct": False}, {"id": "b", "correct": True}, {"id": "c", "correct": True}]
    >>> flips(before, [{"id": "a", "correct": True}, {"id": "b", "correct": True}, {"id": "c", "correct": False}])
    {'flip_to_correct': 0.3333333333333333, 'flip_to_wrong': 0.3333333333333333}
    """
    before = {r["id"]: r["correct"] for r in previous if r["correct"] is not None}
    pairs = [
        (before[r["id"]], r["correct"]) for r in records if r["correct"] is not None and r["id"] in before
    ]
    if not pairs:
        return {}
    return {
        "flip_to_correct": sum(not was and now for was, now in pairs) / len(pairs),
        "flip_to_wrong": sum(was and not now for was, now in pairs) / len(pairs),
    }


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
    previous: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Scalar metrics on held-out `samples`, and under "records" one dict per question.

    acc: greedy accuracy (scored questions only); format: share of greedy answers in the
    template's layout; response_length: mean greedy tokens; when n > 1, pass@k for each k and
    sampled_format, the share of the sampled answers in the template's layout; given `previous`,
    the records of the last evaluation of these samples, flip_to_correct and flip_to_wrong (`flips`).
    `benchmark` is the set's convention (`eval_benchmark` picks it); `batch_size` bounds the rows
    generated at once (prompts x completions).
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
    return metrics | flips(previous or [], metrics["records"])
