"""Benchmark rows as `vlrl eval` loads them: BOM, an image root, rows the model's processor rejects."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from vlrl.cli import main
from vlrl.data import RowError
from vlrl.evaluation.loaders import load_benchmark


def mmmu_row(i: int, image: str) -> dict:
    return {
        "id": f"validation_Math_{i}",
        "question": "<image 1> How many shapes?",
        "options": "[]",
        "answer": "3",
        "image_1": image,
        "question_type": "open",
    }


@pytest.fixture
def layout(tmp_path):
    """Annotations in ann/, images under pics/ (as VLM-R1 and LLaVA keep them): a normal image and
    a 10000x20 one, whose aspect ratio (500) Qwen2-VL's processor refuses."""
    (tmp_path / "ann").mkdir()
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (56, 56), "white").save(tmp_path / "pics/ok.png")
    Image.new("RGB", (10000, 20), "white").save(tmp_path / "pics/wide.png")
    rows = [mmmu_row(0, "ok.png"), mmmu_row(1, "wide.png"), mmmu_row(2, "ok.png")]
    path = tmp_path / "ann/mmmu.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, tmp_path / "pics"


def test_mathvista_json_with_a_bom(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "1.png")
    row = {"pid": "1", "question": "How many?", "image": "1.png", "answer": "3", "question_type": "free_form",
           "answer_type": "integer", "precision": None, "unit": None, "choices": None}  # fmt: skip
    path = tmp_path / "testmini.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"1": row}).encode())
    (sample,) = load_benchmark(path, "mathvista")
    assert sample.answer == "3" and sample.images == [tmp_path / "1.png"]


def test_image_root(layout):
    path, root = layout
    with pytest.raises(RowError, match=r"mmmu\.jsonl:1 field 'images'.*image not found.*ann"):
        load_benchmark(path, "mmmu")
    samples = load_benchmark(path, "mmmu", image_root=root)
    assert [s.images for s in samples] == [[root / "ok.png"], [root / "wide.png"], [root / "ok.png"]]


def test_processor_rejection_names_the_benchmark_line(layout, caplog):
    path, root = layout

    def processor(sample):
        if sample.images[0].name == "wide.png":
            raise ValueError("absolute aspect ratio must be smaller than 200, got 500.0")
        return 10

    with pytest.raises(RowError, match=r"mmmu\.jsonl:2 field 'images'.*aspect ratio") as caught:
        load_benchmark(path, "mmmu", image_root=root, prompt_length=processor)
    assert caught.value.kind == "rejected by processor"
    with caplog.at_level(logging.WARNING, logger="vlrl.evaluation.loaders"):
        samples = load_benchmark(path, "mmmu", image_root=root, prompt_length=processor, skip_invalid=True)
    assert [s.id for s in samples] == ["validation_Math_0", "validation_Math_2"]
    assert "mmmu.jsonl:2" in caplog.text and "aspect ratio" in caplog.text


def test_vlrl_eval_reports_a_rejected_row(layout, tiny_models, tmp_path, capsys):
    path, root = layout
    args = ["eval", "--model", str(tiny_models["qwen2_vl"]), "--data", str(path), "--benchmark", "mmmu",
            "--max-new-tokens", "2", "--image-root", str(root), "--out", str(tmp_path / "p.jsonl")]  # fmt: skip
    assert main(args) == 2
    assert "mmmu.jsonl:2 field 'images'" in capsys.readouterr().err
    assert main([*args, "--skip-invalid"]) == 0
    predictions = (tmp_path / "p.jsonl").read_text().splitlines()
    assert [json.loads(p)["id"] for p in predictions] == ["validation_Math_0", "validation_Math_2"]
