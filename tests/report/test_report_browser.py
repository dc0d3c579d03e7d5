"""The report in headless Chromium: the page loads, its SVG plots and viewer render, the script
filters the viewer, and a screenshot shows something (saved to /tmp/vlrl_report_screenshot.png
for a person to look at)."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pytest
from PIL import Image

from vlrl.report import write_report

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not on PATH (apt-get install chromium; .ci/run installs it)",
)
SCREENSHOT_COPY = Path("/tmp/vlrl_report_screenshot.png")


@pytest.fixture
def report(run_dir: Path, tmp_path: Path) -> Path:
    return write_report(run_dir, tmp_path / "report.html")


def test_plots_and_viewer_render(report, chromium):
    dom = chromium(report.as_uri(), "--dump-dom")
    assert dom.count("<svg") == 10 and "<polyline" in dom  # constant metrics are folded, not plotted
    # The script ran: it wrote the count, and showed only the last step's groups.
    assert "6 of 6 responses shown" in dom  # step 30 only: 4 + 2 responses
    assert re.search(r'<article class="rollout" data-step="10" hidden=""', dom)
    assert re.search(r'<article class="rollout" data-step="30">', dom)
    assert re.search(r'<img src="data:image/(png|jpeg);base64,', dom)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


def test_viewer_filters_and_sorts(report, chromium):
    # All steps, responses with total >= 1, highest first.
    dom = chromium(report.as_uri() + "#step=all&key=total&op=ge&value=1&sort=desc", "--dump-dom")
    assert "12 of 18 responses shown" in dom  # 3 per count group (totals 2, 1, 1) + 1 per boxes group
    order = re.findall(r'<div class="resp \w+" data-index="(\d)" data-total="([\d.]+)"', dom)
    assert order[:4] == [
        ("0", "2.0"),
        ("1", "1.0"),
        ("2", "1.0"),
        ("3", "0.0"),
    ]  # stable, then the hidden one


def test_screenshot_is_a_real_picture(report, tmp_path, chromium):
    shot = tmp_path / "report.png"
    chromium(report.as_uri(), f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 900)  # IHDR width, height
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # text, lines, fills: not a blank page
    shutil.copyfile(shot, SCREENSHOT_COPY)
