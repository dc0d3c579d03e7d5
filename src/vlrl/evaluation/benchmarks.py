"""BENCHMARKS: each benchmark's answer conventions by name, one uniform interface.

    extract(text, sample) -> str | None           the answer a response gives; None: no answer
    score(extracted, sample) -> float | None      1.0 right, 0.0 wrong or no answer; None: the
                                                  convention cannot score this sample
    metrics(records) -> dict                      optional benchmark-level breakdowns

Every extractor takes the content of the last `<answer>...</answer>` when there is one, the
format our models are trained to write; otherwise each benchmark parses free text its own way.
`layout` names the loader in `vlrl.evaluation.loaders.LOADERS` that reads the benchmark's
distributed files ("vlrl": any layout vlrl trains on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import vlrl.evaluation.mathverse as mathverse
import vlrl.evaluation.mathvista as mathvista
import vlrl.evaluation.mmmu as mmmu
import vlrl.evaluation.perception as perception
from vlrl.data.sample import Sample
from vlrl.evaluation.records import Record, by_fields
from vlrl.rewards.matching import answers_match
from vlrl.rewards.tags import last_answer


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's answer conventions; `source` says where its rules come from."""

    name: str
    extract: Callable[[str, Sample], str | None]
    score: Callable[[str | None, Sample], float | None]
    layout: str
    source: str
    metrics: Callable[[list[Record]], dict[str, Any]] | None = None


def reward_score(extracted: str | None, sample: Sample) -> float | None:
    """The training `accuracy` reward's rule (vlrl.rewards.accuracy) on an extracted answer.

    No truth, or boxes: not applicable (None). No answer or an empty one: 0.0. Else
    `answers_match` (options by letter or text, yes/no, normalised text, math-verify).

    >>> reward_score("\\\\frac{6}{2}", Sample("1", "q", "3")), reward_score(None, Sample("2", "q", [1, 2, 3, 4]))
    (1.0, None)
    """
    if sample.answer is None or isinstance(sample.answer, list | tuple | dict):
        return None
    if extracted is None or not extracted.strip():
        return 0.0
    return float(answers_match(extracted, sample.answer, sample.choices))


def reward_extract(text: str, sample: Sample) -> str | None:
    """The `<answer>` content, as the training reward reads it; no free-text fallback, since the
    reward gives an untagged response nothing."""
    return last_answer(text)


BENCHMARKS: dict[str, Benchmark] = {
    "math_verify": Benchmark(
        "math_verify",
        reward_extract,
        reward_score,
        layout="vlrl",
        source="vlrl's training accuracy reward (math-verify for maths), so eval and reward agree",
    ),
    "mathvista": Benchmark(
        "mathvista",
        mathvista.extract,
        mathvista.score,
        layout="mathvista",
        source="MathVista evaluation/calculate_score.py (arXiv 2310.02255), rule-based extraction",
        metrics=by_fields("task", "answer_type"),
    ),
    "mmmu": Benchmark(
        "mmmu",
        mmmu.extract,
        mmmu.score,
        layout="mmmu",
        source="MMMU mmmu/utils/eval_utils.py (arXiv 2311.16502), no random choice",
        metrics=by_fields("question_type"),
    ),
    "mathverse": Benchmark(
        "mathverse",
        mathverse.extract,
        mathverse.score,
        layout="mathverse",
        source="MathVerse (arXiv 2403.14624) with exact match + math-verify in place of GPT-4",
        metrics=by_fields("problem_version"),
    ),
    "rec": Benchmark(
        "rec",
        perception.whole_text,
        perception.rec_score,
        layout="vlrl",
        source="referring expression comprehension, Acc@IoU0.5 as in VLM-R1 (arXiv 2504.07615)",
    ),
    "detection": Benchmark(
        "detection",
        perception.whole_text,
        perception.detection_score,
        layout="vlrl",
        source="open-vocabulary detection: per-image s * mAP (VLM-R1), dataset COCO mAP and AR@100 (pycocotools)",
        metrics=perception.detection_metrics,
    ),
    "count": Benchmark(
        "count",
        perception.whole_text,
        perception.count_score,
        layout="vlrl",
        source="counting: exact count match (the `count` reward)",
    ),
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark registered as `name`; an unknown name fails listing the valid ones."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]
