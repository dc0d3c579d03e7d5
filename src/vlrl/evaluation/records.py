"""What evaluating one question leaves behind (`Record`), and accuracies over many of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlrl.data.sample import Sample
from vlrl.evaluation.stats import pass_at_k, wilson_interval

CATEGORY_FIELDS = ("category", "task", "subject", "question_type")
"""Sample fields that name a question's category, in the order the first one present is taken."""


def category_of(sample: Sample, field: str | None = None) -> str:
    """The sample's `field`, or its first field in CATEGORY_FIELDS that is set; "-" if none.

    >>> category_of(Sample("1", "q", "a", extra={"subject": "Art"})), category_of(Sample("2", "q", "a"))
    ('Art', '-')
    """
    fields = sample.fields()
    names = CATEGORY_FIELDS if field is None else (field,)
    value = next((fields[name] for name in names if fields.get(name) is not None), None)
    return "-" if value is None else str(value)


@dataclass
class Record:
    """One question with its n completions: texts, extracted answers, scores, token lengths.

    A score is None when the benchmark cannot score the sample (a box answer under a text
    convention): that depends on the sample alone, so all n scores are None or none is. A
    completion is correct when it scores 1.0 (every convention here scores 0 or 1).
    """

    sample: Sample
    category: str
    texts: list[str]
    extracted: list[str | None]
    scores: list[float | None]
    lengths: list[int]
    finish_reasons: list[str]

    @property
    def scored(self) -> bool:
        return all(s is not None for s in self.scores)

    @property
    def correct(self) -> list[bool]:
        return [s is not None and s >= 1.0 for s in self.scores]

    @property
    def accuracy(self) -> float:
        """Mean score over the n completions (the pass@1 estimate of this question)."""
        return sum(s or 0.0 for s in self.scores) / len(self.scores)

    def to_json(self) -> dict[str, Any]:
        """One line of the predictions file; lists hold one entry per completion."""
        s = self.sample
        return {
            "id": s.id,
            "question": s.question,
            "answer": s.answer,
            "category": self.category,
            "prediction": self.texts,
            "extracted": self.extracted,
            "score": self.scores,
            "n_correct": sum(self.correct),
            "length": self.lengths,
            "finish_reason": self.finish_reasons,
        }


def accuracy_summary(records: list[Record]) -> dict[str, Any]:
    """Accuracy over the scored questions with its 95% Wilson interval.

    The questions are the independent trials, so with n > 1 completions each the interval uses
    the number of questions (the completions of one question are correlated).
    """
    scored = [r for r in records if r.scored]
    accuracy = sum(r.accuracy for r in scored) / len(scored) if scored else 0.0
    return {"n": len(scored), "accuracy": accuracy, "ci95": list(wilson_interval(accuracy, len(scored)))}


def breakdown(records: list[Record], key: Callable[[Record], str]) -> dict[str, dict[str, Any]]:
    """`accuracy_summary` per group of records, groups named by `key` and sorted."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return {name: accuracy_summary(groups[name]) for name in sorted(groups)}


def by_fields(*names: str) -> Callable[[list[Record]], dict[str, Any]]:
    """A benchmark metrics hook: for each sample field in `names`, the accuracy per value."""

    def metrics(records: list[Record]) -> dict[str, Any]:
        return {
            f"by_{name}": breakdown(records, lambda r, name=name: category_of(r.sample, name))
            for name in names
        }

    return metrics


def mean_pass_at_k(records: list[Record], k: int) -> float:
    """pass@k averaged over the scored questions (Chen et al. 2021: the mean of per-question estimates)."""
    scored = [r for r in records if r.scored]
    return sum(pass_at_k(len(r.scores), sum(r.correct), k) for r in scored) / len(scored) if scored else 0.0
