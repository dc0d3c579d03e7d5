"""Data loading with a real model processor: rows it rejects are bad rows, and the config's image
options (`data.max_image_pixels`, `data.image_root`) reach loading and the adapter."""

from __future__ import annotations

import pytest
from PIL import Image

from vlrl.config.sections import DataSection
from vlrl.data import RowError, load_samples
from vlrl.data.images import DEFAULT_MAX_PIXELS, ImageTooLargeError
from vlrl.data.prompts import get_template
from vlrl.data.sample import Sample
from vlrl.models.adapters import adapter_class
from vlrl.training.setup import load_data

TEMPLATE = get_template("think_answer")


@pytest.fixture(scope="module")
def processor():
    """The tiny Qwen2-VL processor (its image processor is the real one), without a model."""
    from vlrl.models.tiny.factory import FAMILIES, QWEN_SPECIALS, train_bpe

    tok = train_bpe(["what is in the image", "<think> </think> <answer> </answer>"], QWEN_SPECIALS, 300)
    return FAMILIES["qwen2_vl"].processor(tok)


def _image(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(path)
    return path


def test_extreme_aspect_ratio_is_a_row_problem(tmp_path, jsonl, processor):
    # Qwen2-VL's smart_resize refuses aspect ratios over 200: 10000x20 is 500
    _image(tmp_path / "ok.png", (56, 56))
    _image(tmp_path / "wide.png", (10000, 20))
    rows = [{"question": "q", "answer": "a", "image": name} for name in ("ok.png", "wide.png", "ok.png")]
    path = jsonl([{**row, "id": str(i)} for i, row in enumerate(rows)])
    adapter = adapter_class("qwen2_vl")(processor)

    with pytest.raises(RowError) as caught:
        load_samples(path, max_prompt_length=1024, prompt_length=lambda s: adapter.prompt_length(s, TEMPLATE))
    err = caught.value
    assert (err.line, err.field_name, err.kind) == (2, "images", "rejected by processor")
    assert "train.jsonl:2" in str(err) and "aspect ratio must be smaller than 200" in str(err)

    data = DataSection(train=[str(path)], skip_invalid=True)
    samples, (report,) = load_data(data.train, data, adapter, TEMPLATE)
    assert [s.id for s in samples] == ["0", "2"] and report.skipped[0].kind == "rejected by processor"


def test_adapter_holds_the_image_limit(tmp_path, processor):
    sample = Sample(id="x", question="q", answer="a", images=[_image(tmp_path / "a.png", (56, 56))])
    assert adapter_class("qwen2_vl")(processor).max_image_pixels == DEFAULT_MAX_PIXELS
    adapter = adapter_class("qwen2_vl")(processor, max_image_pixels=56 * 56 - 1)
    with pytest.raises(ImageTooLargeError, match="56x56"):
        adapter.encode(sample, TEMPLATE)
    adapter.max_image_pixels = 56 * 56
    assert adapter.encode(sample, TEMPLATE).length > 0


def test_data_config_reaches_loading(tmp_path, jsonl, processor):
    _image(tmp_path / "images/a.png", (4, 4))
    (tmp_path / "ann").mkdir()
    path = jsonl([{"question": "q", "answer": "a", "image": "a.png"}], name="ann/train.jsonl")
    adapter = adapter_class("qwen2_vl")(processor)

    data = DataSection(train=[str(path)], image_root=str(tmp_path / "images"))
    (sample,), _ = load_data(data.train, data, adapter, TEMPLATE)
    assert sample.images == [tmp_path / "images/a.png"]

    small = data.model_copy(update={"max_image_pixels": 15})
    with pytest.raises(RowError, match="data.max_image_pixels"):
        load_data(small.train, small, adapter, TEMPLATE)
    assert DataSection(train=["x"]).max_image_pixels == DEFAULT_MAX_PIXELS == 64_000_000
