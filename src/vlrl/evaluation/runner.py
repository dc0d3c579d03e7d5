"""Evaluating a model on a benchmark: batched generation, answer extraction, scoring, summary.

    summary = evaluate_model("ckpt/", "testmini.json", benchmark="mathvista", out="preds.jsonl")
    summary = run_eval(backend, adapter, samples, "mmmu", n=8, k=(1, 4, 8))   # a model in hand

n completions per question: one greedy answer by default; with n > 1, samples at temperature
1.0 (or as given), from which pass@k is estimated without bias (Chen et al. 2021). Accuracy is
the mean score over questions (over their n completions), with a 95% Wilson interval.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from vlrl.data.images import DEFAULT_MAX_PIXELS
from vlrl.data.prompts import Template, get_template
from vlrl.data.sample import Sample
from vlrl.evaluation.benchmarks import Benchmark, get_benchmark
from vlrl.evaluation.loaders import load_benchmark
from vlrl.evaluation.records import Record, accuracy_summary, breakdown, category_of, mean_pass_at_k
from vlrl.io import ProgressBar, write_jsonl
from vlrl.models.adapters import ModelAdapter
from vlrl.rollout.base import Completion, RolloutBackend, SamplingParams, make_backend

logger = logging.getLogger(__name__)


def sampling_params(
    n: int, temperature: float | None, max_new_tokens: int, seed: int | None
) -> SamplingParams:
    """n completions per question: greedy when n = 1 unless a temperature is given, else 1.0."""
    temperature = (0.0 if n == 1 else 1.0) if temperature is None else temperature
    if n > 1 and temperature == 0:
        raise ValueError(
            f"n={n} completions per question at temperature 0 would all be the same greedy answer; "
            "give a temperature > 0 for pass@k"
        )
    return SamplingParams(group_size=n, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)


def check_k(k_list: Sequence[int], n: int) -> None:
    """Every k of pass@k is estimable from n completions per question."""
    for k in k_list:
        if not 1 <= k <= n:
            raise ValueError(f"pass@{k} needs at least {k} completions per question, but n is {n}")


def score_completions(
    sample: Sample, completions: list[Completion], benchmark: Benchmark, category: str
) -> Record:
    """Extract and score each completion of one question."""
    texts = [c.text for c in completions]
    extracted = [benchmark.extract(t, sample) for t in texts]
    return Record(
        sample=sample,
        category=category,
        texts=texts,
        extracted=extracted,
        scores=[benchmark.score(e, sample) for e in extracted],
        lengths=[int(c.token_ids.numel()) for c in completions],
        finish_reasons=[c.finish_reason for c in completions],
    )


def generate_records(
    backend: RolloutBackend,
    adapter: ModelAdapter,
    template: Template,
    samples: list[Sample],
    benchmark: Benchmark,
    params: SamplingParams,
    batch_size: int = 16,
    category_field: str | None = None,
    progress: bool = False,
) -> list[Record]:
    """Generate `params.group_size` completions per sample, `batch_size` prompts at a time, and score them.

    `progress`: a bar with ETA and the running accuracy on stderr (for `vlrl eval`; the evaluations
    inside a training run leave the run's own progress display alone).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    records: list[Record] = []
    bar = ProgressBar(len(samples), f"eval {benchmark.name}", unit="question", enabled=progress)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        groups = backend.generate([adapter.encode(s, template) for s in chunk], params)
        # The family's box convention travels with each sample, so box benchmarks score in pixels.
        records += [
            score_completions(
                replace(s, extra=s.extra | adapter.box_fields(s)),
                group,
                benchmark,
                category_of(s, category_field),
            )
            for s, group in zip(chunk, groups, strict=True)
        ]
        logger.info("%s: %d / %d questions", benchmark.name, len(records), len(samples))
        # The running accuracy re-reads every record: only for a bar someone sees.
        bar.update(len(chunk), **({"acc": accuracy_summary(records)["accuracy"]} if progress else {}))
    bar.close()
    return records


def summarise(records: list[Record], benchmark: Benchmark, k_list: Sequence[int], temperature: float) -> dict:
    """Accuracy with its interval, pass@k, answer rate, lengths, per-category and benchmark breakdowns."""
    overall = accuracy_summary(records)
    total = max(sum(len(r.texts) for r in records), 1)  # completions
    summary: dict[str, Any] = {
        "benchmark": benchmark.name,
        "n_questions": len(records),
        "n_scored": overall["n"],
        "samples_per_question": len(records[0].texts) if records else 0,
        "temperature": temperature,
        "accuracy": overall["accuracy"],
        "ci95": overall["ci95"],
        **{f"pass@{k}": mean_pass_at_k(records, k) for k in k_list},
        "answer_rate": sum(e is not None for r in records for e in r.extracted) / total,
        "response_length": sum(n for r in records for n in r.lengths) / total,
        "truncated": sum(f == "length" for r in records for f in r.finish_reasons) / total,
        "categories": breakdown(records, lambda r: r.category),
    }
    return summary | (benchmark.metrics(records) if benchmark.metrics else {})


def write_predictions(records: list[Record], path: str | os.PathLike) -> None:
    """One JSON line per question (see `Record.to_json`)."""
    write_jsonl(path, (record.to_json() for record in records))


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def format_summary(summary: dict) -> str:
    """The summary as a small text table: overall numbers, then one row per category."""
    n = summary["samples_per_question"]
    how = "greedy" if summary["temperature"] == 0 else f"temperature {summary['temperature']}"
    lo, hi = summary["ci95"]
    lines = [
        f"{summary['benchmark']}: {summary['n_questions']} questions ({summary['n_scored']} scored), "
        f"{n} completion{'s' if n > 1 else ''} each, {how}",
        f"  accuracy      {_pct(summary['accuracy'])}   95% CI [{_pct(lo)}, {_pct(hi)}] (Wilson)",
        *(f"  {key:<13} {_pct(value)}" for key, value in summary.items() if key.startswith("pass@")),
        f"  answered      {_pct(summary['answer_rate'])}   truncated {_pct(summary['truncated'])}   "
        f"mean length {summary['response_length']:.1f} tokens",
        f"  {'category':<28} {'n':>5}  accuracy  95% CI",
    ]
    for name, row in summary["categories"].items():
        lo, hi = row["ci95"]
        lines.append(f"  {name[:28]:<28} {row['n']:>5}    {_pct(row['accuracy'])}  [{_pct(lo)}, {_pct(hi)}]")
    return "\n".join(lines)


def run_eval(
    backend: RolloutBackend,
    adapter: ModelAdapter,
    samples: list[Sample],
    benchmark: str = "math_verify",
    template: str | Template = "think_answer",
    n: int = 1,
    k: Sequence[int] | None = None,
    temperature: float | None = None,
    max_new_tokens: int = 1024,
    batch_size: int = 16,
    seed: int | None = 0,
    category_field: str | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict:
    """Evaluate the model behind `backend` on `samples`; write predictions to `out` if given.

    `k` defaults to (1, n); `progress` as in `generate_records`. Returns the summary of `summarise`.
    """
    bench = get_benchmark(benchmark)
    template = get_template(template) if isinstance(template, str) else template
    k_list = sorted(set(k or (1, n)))
    check_k(k_list, n)
    params = sampling_params(n, temperature, max_new_tokens, seed)
    records = generate_records(
        backend, adapter, template, samples, bench, params, batch_size, category_field, progress
    )
    if out is not None:
        write_predictions(records, out)
    return summarise(records, bench, k_list, params.temperature)


def evaluate_model(
    model: str | os.PathLike,
    data: str | os.PathLike,
    benchmark: str = "math_verify",
    limit: int | None = None,
    device: str = "auto",
    dtype: str | None = None,
    image_root: str | os.PathLike | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    skip_invalid: bool = False,
    **options,
) -> dict:
    """Load a checkpoint folder and a benchmark file (in the benchmark's layout) and `run_eval`.

    `limit` keeps the first questions of the file; `dtype` defaults to bfloat16 on a GPU and
    float32 on the CPU; `image_root`, `max_image_pixels` and `skip_invalid` are as in
    `vlrl.data.load_samples`; `options` go to `run_eval`.
    """
    from vlrl.models.loading import load_model, pick_device

    bench = get_benchmark(benchmark)
    torch_device = pick_device(device, setting="--device")
    dtype = dtype or ("bfloat16" if torch_device.type == "cuda" else "float32")
    loaded = load_model(model, dtype=dtype, device=torch_device, max_image_pixels=max_image_pixels)
    # the model comes first so that every row goes through its processor while the file is read:
    # a row it rejects is then reported with its file and line, not in the middle of generation
    template = options.get("template", "think_answer")
    template = get_template(template) if isinstance(template, str) else template
    samples = load_benchmark(
        data,
        bench.layout,
        image_root=image_root,
        max_image_pixels=max_image_pixels,
        skip_invalid=skip_invalid,
        prompt_length=lambda s: loaded.adapter.prompt_length(s, template),
    )[:limit]
    backend = make_backend("hf", loaded.model, loaded.adapter)
    return run_eval(backend, loaded.adapter, samples, benchmark, **options)
