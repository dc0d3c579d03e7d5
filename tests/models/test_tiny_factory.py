"""The tiny-model factory: offline build, standard HF format, Auto classes load and generate."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

import vlrl  # noqa: F401  (registers the image-only processors with AutoProcessor)
from vlrl.cli import main
from vlrl.models.processors import torchvision_usable
from vlrl.models.tiny.factory import FAMILIES, build_tiny_model

FAMILY_NAMES = sorted(FAMILIES)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_auto_classes_load_and_generate_with_an_image(family, tmp_path, images):
    assert main(["tiny-model", "--family", family, "--out", str(tmp_path / "m"), "--size", "micro"]) == 0
    processor = AutoProcessor.from_pretrained(tmp_path / "m")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
    # An unregistered processor class would silently come back as a bare tokenizer.
    assert hasattr(processor, "image_processor"), type(processor)
    if not torchvision_usable():
        assert not hasattr(processor, "video_processor") or processor.video_processor is None

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.open(images["small"])], return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert new.numel() > 0
    assert isinstance(processor.decode(new), str)


def test_tokenizer_is_trained_bpe_with_family_special_tokens(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["qwen2_vl"])
    text = "How many red shapes are in the image?"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # Merges learned from the task text compress it well below one token per character.
    assert len(ids) < len(text) / 2
    assert tok.decode(ids) == text
    for special in ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert tok.eos_token == "<|im_end|>"
    # Byte-level: text never seen in training still round-trips.
    assert tok.decode(tok("Zürich 東京 ∑", add_special_tokens=False)["input_ids"]) == "Zürich 東京 ∑"


def test_internvl_tokenizer_names_its_image_tokens(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["internvl"])
    assert tok.context_image_token == "<IMG_CONTEXT>"
    assert tok.start_image_token == "<img>" and tok.end_image_token == "</img>"


def test_build_is_deterministic_by_seed(tmp_path):
    corpus = ["How many shapes? <think>two</think><answer>2</answer>"] * 20
    a = build_tiny_model("qwen2_vl", tmp_path / "a", size="micro", seed=3, corpus=corpus)
    b = build_tiny_model("qwen2_vl", tmp_path / "b", size="micro", seed=3, corpus=corpus)
    c = build_tiny_model("qwen2_vl", tmp_path / "c", size="micro", seed=4, corpus=corpus)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_unknown_family_and_size_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown model family 'llava'.*qwen2_vl"):
        build_tiny_model("llava", tmp_path)
    with pytest.raises(ValueError, match="unknown tiny-model size 'huge'"):
        build_tiny_model("qwen2_vl", tmp_path, size="huge")
