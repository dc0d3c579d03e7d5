"""Benchmark evaluation: answer conventions, benchmark loaders, pass@k, and in-training eval.

summary = evaluate_model("ckpt/", "testmini.json", benchmark="mathvista", out="preds.jsonl")
metrics = evaluate_during_training(backend, adapter, template, samples, max_new_tokens=512,
                                   n=8, k_list=(1, 8))
"""

from vlrl.evaluation.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from vlrl.evaluation.intraining import evaluate_during_training
from vlrl.evaluation.loaders import CONVERTERS, LOADERS, load_benchmark
from vlrl.evaluation.records import Record
from vlrl.evaluation.runner import evaluate_model, format_summary, run_eval
from vlrl.evaluation.stats import pass_at_k, wilson_interval

__all__ = [
    "BENCHMARKS",
    "CONVERTERS",
    "LOADERS",
    "Benchmark",
    "Record",
    "evaluate_during_training",
    "evaluate_model",
    "format_summary",
    "get_benchmark",
    "load_benchmark",
    "pass_at_k",
    "run_eval",
    "wilson_interval",
]
