"""Inputs the family tests share: one sample shape and three prompts that make every batch pad."""

from __future__ import annotations

from vlrl.data.prompts import TEMPLATES
from vlrl.data.sample import Sample
from vlrl.models.batching import Encoded

PLAIN = TEMPLATES["answer_only"]
TWO = "Image 1: <image>\nImage 2: <image>\nWhich image has more circles?"


def make_sample(images, question: str = "How many shapes?") -> Sample:
    return Sample(id="s", question=question, answer="1", images=list(images))


def three_prompts(adapter, images, two: str = TWO) -> list[Encoded]:
    """A one-image prompt, a longer two-image one (question `two`) and a short text-only one:
    every batch pads (the text-only prompt gets more left padding than a 64-token chunk of
    Qwen3.5's chunked delta rule)."""
    return [
        adapter.encode(make_sample([images["small"]]), PLAIN),
        adapter.encode(make_sample([images["big"], images["small"]], two), PLAIN),
        adapter.encode(make_sample([], "What is 2 + 3?"), PLAIN),
    ]
