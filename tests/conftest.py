"""Shared fixtures: tiny models are built once per test session, offline, from vlrl's own factory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "internvl", "idefics3")


class TinyModels(dict):
    """family -> a micro-size checkpoint with the real default tokenizer corpus, each built on
    first use (a test session that needs two families builds two)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, family: str) -> Path:
        from vlrl.models.tiny.factory import build_tiny_model

        self[family] = build_tiny_model(family, self.root / family, size="micro")
        return self[family]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    return TinyModels(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict[str, Path]:
    """A 112x112 image (no resize for any family) and a 300x180 one (resized / tiled)."""
    root = tmp_path_factory.mktemp("images")
    small = Image.new("RGB", (112, 112), "white")
    ImageDraw.Draw(small).ellipse((10, 10, 40, 40), fill="red")
    big = Image.new("RGB", (300, 180), "white")
    ImageDraw.Draw(big).rectangle((100, 50, 200, 120), fill="blue")
    paths = {"small": root / "small.png", "big": root / "big.png"}
    small.save(paths["small"])
    big.save(paths["big"])
    return paths


@pytest.fixture
def chromium(tmp_path):
    """Run headless Chromium on a URL with the closed-network flags (see the platform notes);
    returns its stdout. Skips the test when Chromium is not installed."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not on PATH (apt-get install chromium; .ci/run installs it)")
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]

    def run(url: str, *args: str) -> str:
        return subprocess.run(
            [binary, *flags, *args, url], capture_output=True, text=True, timeout=120, check=True
        ).stdout

    return run
