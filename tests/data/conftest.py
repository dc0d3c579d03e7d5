"""Fixtures for data tests: tiny PNGs and data files written under tmp_path; nothing downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path, monkeypatch):
    """Keep the arrow files `datasets` builds for parquet / csv out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture
def png(tmp_path):
    """`png(name)` writes a 4x4 PNG under tmp_path and returns its path."""

    def make(name: str = "a.png", color: str = "red") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), color).save(path)
        return path

    return make


@pytest.fixture
def jsonl(tmp_path):
    """`jsonl(rows, name)` writes rows (dicts, or raw strings written as they are) as JSON Lines."""

    def write(rows: list, name: str = "train.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return path

    return write
