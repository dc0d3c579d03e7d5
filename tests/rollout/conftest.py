"""Fixtures for rollout tests: the three tiny families loaded once, and a mixed batch of prompts."""

from __future__ import annotations

import pytest

from vlrl.data.sample import Sample
from vlrl.models.loading import load_model

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "internvl", "idefics3")


@pytest.fixture(scope="session")
def loaded(tiny_models):
    return {f: load_model(tiny_models[f]) for f in FAMILIES}


@pytest.fixture(scope="session")
def samples(images) -> list[Sample]:
    """Prompts of different lengths (so left padding is exercised): 1 image, 2 images, text only."""
    two = "Image 1: <image>\nImage 2: <image>\nWhich image has more circles?"
    return [
        Sample(id="one", question="How many shapes?", answer="1", images=[images["small"]]),
        Sample(id="two", question=two, answer="1", images=[images["small"], images["big"]]),
        Sample(id="text", question="What is 2 + 3?", answer="5"),
    ]
