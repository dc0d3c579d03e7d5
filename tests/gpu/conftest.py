"""The GPU tier (`pytest -m gpu`): tiny models and real-size shapes on one CUDA device.

Every test_gpu_* module but test_gpu_helpers (the version gate's CPU test) marks its tests `gpu`
and skips them, with the reason, where CUDA is not available; a family whose transformers
support is newer than the installed one skips too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from gpu_helpers import needs_family

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


@pytest.fixture
def cuda_model(tiny_models):
    """`cuda_model(family)`: the family's micro checkpoint, or a skip naming the version gap."""

    def get(family: str) -> Path:
        needs_family(family)
        return tiny_models[family]

    return get
