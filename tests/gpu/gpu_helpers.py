"""What the GPU tests share: the transformers each model family needs."""

from __future__ import annotations

import pytest
import transformers
from packaging.version import Version

# The oldest transformers each family used here runs with: pyproject's floor until one needs more.
MIN_TRANSFORMERS = {"qwen2_vl": "5.16", "qwen2_5_vl": "5.16"}


def needs_family(family: str) -> None:
    """Skip the calling test when the installed transformers is older than `family` needs."""
    if Version(transformers.__version__) < Version(MIN_TRANSFORMERS[family]):
        pytest.skip(
            f"{family} needs transformers >= {MIN_TRANSFORMERS[family]}, this is {transformers.__version__}"
        )
