"""The score phase: every configured reward over a group batch, then their weighted sum."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from vlrl.config.sections import RewardSection
from vlrl.data import Sample
from vlrl.models.adapters import ModelAdapter
from vlrl.rewards import call_reward, combine, load_reward
from vlrl.rewards.runner import reward_names
from vlrl.rollout.base import Completion


class RewardScorer:
    """Loads the reward functions once; `score` runs them on P x G completions."""

    def __init__(self, cfg: RewardSection, adapter: ModelAdapter):
        self.cfg = cfg
        self.adapter = adapter
        names = reward_names(cfg.functions)  # what reward/<name>/... metrics and `failures` are keyed by
        self.functions = {names[spec]: load_reward(spec) for spec in cfg.functions}
        self.weights = (
            {names[spec]: w for spec, w in zip(cfg.functions, cfg.weights, strict=True)}
            if cfg.weights
            else None
        )
        self.failures: Counter[str] = Counter()  # reward name -> samples that got the fallback, whole run

    def fields(self, samples: list[Sample], groups: list[list[Completion]], max_new_tokens: int) -> dict:
        """Per-completion reward fields: the samples' data fields, repeated per completion, plus
        what the rollout knows (finish reason, length), the model's box convention and the reward
        settings."""
        rows: list[dict[str, Any]] = []
        for sample, group in zip(samples, groups, strict=True):
            base = sample.fields() | self.adapter.box_fields(sample)
            for c in group:
                rows.append(
                    {
                        **base,
                        "finish_reason": c.finish_reason,
                        "completion_length": int(c.token_ids.numel()),
                        "max_new_tokens": max_new_tokens,
                        "overlong_buffer": self.cfg.overlong_buffer,
                        "repetition_ngram": self.cfg.repetition_ngram,
                    }
                )
        keys = dict.fromkeys(k for row in rows for k in row)
        return {k: [row.get(k) for row in rows] for k in keys}

    def score(
        self, samples: list[Sample], groups: list[list[Completion]], max_new_tokens: int
    ) -> tuple[torch.Tensor, dict[str, list[float | None]], dict[str, float]]:
        """Total rewards [P, G], each reward's scores (flat, None = not applicable), failure counts."""
        texts = [c.text for group in groups for c in group]
        fields = self.fields(samples, groups, max_new_tokens)
        scores: dict[str, list[float | None]] = {}
        stats: dict[str, float] = {}
        for name, fn in self.functions.items():
            scores[name], s = call_reward(
                fn, texts, fields, fallback=self.cfg.fallback, timeout_s=self.cfg.timeout_s, name=name
            )
            self.failures[name] += s["errors"] + s["timeouts"]
            stats[f"reward/{name}/failures"] = float(s["errors"] + s["timeouts"])
        total = torch.tensor(combine(scores, self.weights), dtype=torch.float32)
        return total.view(len(groups), -1), scores, stats
