"""The GPU tier's version gate, on the CPU: a family newer than the installed transformers skips."""

from __future__ import annotations

import pytest
import transformers
from gpu_helpers import needs_family


def test_an_older_transformers_skips_the_family_naming_both_versions(monkeypatch):
    monkeypatch.setattr(transformers, "__version__", "5.15.2")
    with pytest.raises(pytest.skip.Exception, match=r"qwen2_vl needs transformers >= 5.16, this is 5.15.2"):
        needs_family("qwen2_vl")
    monkeypatch.setattr(transformers, "__version__", "5.16.0")
    needs_family("qwen2_vl")  # no skip
