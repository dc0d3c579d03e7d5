"""DeepSeek-VL2's processor against hand-worked numbers: the tiling chosen among the candidate
resolutions, the image tokens of each tiling, the tiles' pixels, the chat format, and loading with
`AutoProcessor` from our tiny checkpoint's processor_config.json and from the released one's."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

import vlrl  # noqa: F401  (registers the processor with AutoProcessor)
from vlrl.models.deepseek_vl2.processing import DeepseekVLV2Processor, select_best_resolution
from vlrl.models.tiny import deepseek_vl2 as tiny
from vlrl.models.tiny.tokenizer import train_bpe

# The released processor_config.json (deepseek-ai/deepseek-vl2-tiny, -small, -base).
RELEASED_TILINGS = tiny.TILINGS
RELEASED = {
    "add_special_token": False,
    "candidate_resolutions": [[384 * m, 384 * n] for m, n in RELEASED_TILINGS],
    "downsample_ratio": 2,
    "ignore_id": -100,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "image_token": "<image>",
    "mask_prompt": False,
    "normalize": True,
    "pad_token": "<｜▁pad▁｜>",
    "patch_size": 14,
    "processor_class": "DeepseekVLV2Processor",
    "sft_format": "deepseek",
}


@pytest.fixture(scope="module")
def tok():
    corpus = ["How many shapes are there? Answer with a number.", "Be brief.", "<answer>3</answer>"] * 20
    tokenizer = train_bpe(corpus, tiny.SPECIALS, vocab_size=300, eos_token=tiny.EOS)
    tokenizer.add_special_tokens(tiny.ROLES)
    return tokenizer


@pytest.fixture(scope="module")
def processor(tok):
    return tiny.deepseek_vl2_processor(tok)


def prompt(n_images: int) -> str:
    return "<|User|>: " + "<image>\n" * n_images + "How many?\n\n<|Assistant|>:"


# ---- tiling -------------------------------------------------------------------------------------


def test_the_best_resolution_keeps_most_pixels_then_wastes_least():
    cands = RELEASED["candidate_resolutions"]
    # 384x384 fits (384, 384) whole with nothing wasted.
    assert select_best_resolution((384, 384), cands) == (384, 384)
    # 800x400: (768, 384) keeps 768*384 = 294912 px (scale 0.96); every candidate at least 800 x 400
    # keeps all 320000, and of those (1152, 768) wastes least: 884736 - 320000 = 564736 against
    # (1536, 768)'s 859648 and (1152, 1152)'s 1007104.
    assert select_best_resolution((800, 400), cands) == (1152, 768)
    # 400x800: the transposed case.
    assert select_best_resolution((400, 800), cands) == (768, 1152)
    # 300x100 is kept whole by (384, 384), which wastes 147456 - 30000; nothing wastes less.
    assert select_best_resolution((300, 100), cands) == (384, 384)
    # 2000x300: (1920, 384) keeps 1920 x 288 px (scale 0.96) but (2304, 384) keeps all 600000.
    assert select_best_resolution((2000, 300), cands) == (2304, 384)
    # ties in kept and wasted area go to the earlier candidate
    assert select_best_resolution((10, 10), [[20, 10], [10, 20]]) == (20, 10)


@pytest.mark.parametrize(
    ("size", "tiling", "tokens"),
    [
        # h = w = ceil((112 // 14) / 2) = 4; tokens = 4*5 + 1 + (th*4) * (tw*4 + 1)
        ((112, 112), (1, 1), 20 + 1 + 4 * 5),  # 41
        ((100, 200), (1, 2), 20 + 1 + 8 * 5),  # (112, 224) keeps all 20000 px: 61
        ((200, 300), (2, 3), 20 + 1 + 12 * 9),  # (224, 336): 129
        ((336, 336), (3, 3), 20 + 1 + 12 * 13),  # 177
        ((1000, 100), (9, 1), 20 + 1 + 4 * 37),  # (1008, 112): 169
    ],
)
def test_each_image_expands_into_its_tilings_tokens(processor, size, tiling, tokens):
    out = processor(text=[prompt(1)], images=[Image.new("RGB", size, "white")], return_tensors="pt")
    assert out["images_spatial_crop"].tolist() == [list(tiling)]
    assert out["pixel_values"].shape == (1 + tiling[0] * tiling[1], 3, 112, 112)
    ids = out["input_ids"][0].tolist()
    assert ids.count(processor.image_token_id) == tokens
    assert processor.num_image_tokens(size) == tokens


def test_the_released_tile_size_gives_421_tokens_per_single_tile_image(tok):
    """384 px tiles of 14 px patches: ceil(27 / 2) = 14 tokens a side; 14*15 + 1 + 14*15 = 421, and
    800x400 (3 x 2 tiles): 14*15 + 1 + 28 * 43 = 1415."""
    released = DeepseekVLV2Processor(
        tok, candidate_resolutions=RELEASED["candidate_resolutions"], patch_size=14, downsample_ratio=2
    )
    assert released.num_image_tokens((384, 384)) == 421
    assert released.num_image_tokens((800, 400)) == 1415


def test_more_than_two_images_are_not_tiled(processor):
    images = [Image.new("RGB", (200, 300), c) for c in ("red", "green", "blue")]
    out = processor(text=[prompt(3)], images=images, return_tensors="pt")
    # three images: one global and one local 112 px view each, 41 tokens each
    assert out["images_spatial_crop"].tolist() == [[1, 1]] * 3
    assert out["pixel_values"].shape == (6, 3, 112, 112)
    assert out["input_ids"][0].tolist().count(processor.image_token_id) == 3 * 41
    # two are (2 x 3 tiles each: 129 tokens)
    two = processor(text=[prompt(2)], images=images[:2], return_tensors="pt")
    assert two["images_spatial_crop"].tolist() == [[2, 3]] * 2
    assert two["input_ids"][0].tolist().count(processor.image_token_id) == 2 * 129


def test_ids_are_bos_then_text_then_image_tokens_in_place(processor, tok):
    out = processor(text=[prompt(1)], images=[Image.new("RGB", (112, 112))], return_tensors="pt")
    ids = out["input_ids"][0].tolist()
    head = tok.encode("<|User|>: ", add_special_tokens=False)
    tail = tok.encode("\nHow many?\n\n<|Assistant|>:", add_special_tokens=False)
    assert ids == [tok.bos_token_id, *head, *[processor.image_token_id] * 41, *tail]
    assert out["attention_mask"].tolist() == [[1] * len(ids)]
    assert out["input_ids"].dtype == torch.long and out["images_spatial_crop"].dtype == torch.long


def test_a_batch_is_left_padded_and_its_tiles_concatenated(processor, tok):
    out = processor(
        text=[prompt(1), "<|User|>: Hi\n\n<|Assistant|>:"],
        images=[Image.new("RGB", (200, 300))],
        return_tensors="pt",
    )
    n = out["attention_mask"].sum(1).tolist()
    assert n[1] < n[0] and out["attention_mask"][1].tolist() == [0] * (n[0] - n[1]) + [1] * n[1]
    assert out["input_ids"][1, : n[0] - n[1]].tolist() == [tok.pad_token_id] * (n[0] - n[1])
    assert out["pixel_values"].shape[0] == 1 + 6


def test_placeholders_and_images_must_match(processor):
    with pytest.raises(ValueError, match="1 <image> placeholders for 2 images"):
        processor(text=[prompt(1)], images=[Image.new("RGB", (8, 8))] * 2)


# ---- pixels -------------------------------------------------------------------------------------


def test_a_wide_image_is_centred_on_the_mean_colour_and_normalised(processor):
    """112x56 of (200, 100, 50): both views are the image on rows 28..83 of a 112x112 tile padded
    with int(0.5 * 255) = 127, each value v becoming (v / 255 - 0.5) / 0.5 = 2v/255 - 1."""
    out = processor(
        text=[prompt(1)], images=[Image.new("RGB", (112, 56), (200, 100, 50))], return_tensors="pt"
    )
    px = out["pixel_values"]
    assert px.shape == (2, 3, 112, 112) and px.dtype == torch.float32
    colour = torch.tensor([2 * 200 / 255 - 1, 2 * 100 / 255 - 1, 2 * 50 / 255 - 1])
    pad = torch.full((3,), 2 * 127 / 255 - 1)
    for view in px:
        for row in (0, 27, 84, 111):
            torch.testing.assert_close(view[:, row, :], pad[:, None].expand(3, 112))
        for row in (28, 55, 83):
            torch.testing.assert_close(view[:, row, :], colour[:, None].expand(3, 112))


def test_local_tiles_are_cut_row_major(processor):
    """224x336 (2 x 3 tiles, no resize): tile i is columns (i % 2) * 112.., rows (i // 2) * 112.."""
    image = Image.new("RGB", (224, 336))
    for i in range(6):
        x, y = (i % 2) * 112, (i // 2) * 112
        image.paste((40 * i, 0, 0), (x, y, x + 112, y + 112))
    out = processor(text=[prompt(1)], images=[image], return_tensors="pt")
    assert out["images_spatial_crop"].tolist() == [[2, 3]]
    red = out["pixel_values"][1:, 0, 56, 56]
    torch.testing.assert_close(red, torch.tensor([2 * 40 * i / 255 - 1 for i in range(6)]))


# ---- chat format --------------------------------------------------------------------------------


def test_the_chat_template_is_the_original_deepseek_conversation(processor):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes? "}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "Be brief.\n\n<|User|>: <image>\nHow many shapes?\n\n<|Assistant|>:"
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "Count: "}, {"type": "image"}]},
    ]
    text = processor.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|User|>: Hi\n\n<|Assistant|>: Hello.<｜end▁of▁sentence｜><|User|>: Count: <image>\n\n<|Assistant|>:"
    )


# ---- loading ------------------------------------------------------------------------------------


def test_our_tiny_processor_round_trips_through_auto_processor(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "DeepseekVLV2Processor"
    # the released file's fields, at the tiny tile size
    assert {k: saved[k] for k in RELEASED} == {
        **RELEASED,
        "candidate_resolutions": tiny.CANDIDATE_RESOLUTIONS,
    }
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is DeepseekVLV2Processor
    assert loaded.candidate_resolutions == processor.candidate_resolutions
    assert loaded.chat_template == processor.chat_template
    image = Image.new("RGB", (200, 300), "red")
    a = processor(text=[prompt(1)], images=[image], return_tensors="pt")
    b = loaded(text=[prompt(1)], images=[image], return_tensors="pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_released_processor_config_loads(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps(RELEASED))
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is DeepseekVLV2Processor
    assert loaded.image_size == 384 and loaded.patch_size == 14 and loaded.downsample_ratio == 2
    assert loaded.candidate_resolutions == RELEASED["candidate_resolutions"]
    assert loaded.num_image_tokens((800, 400)) == 1415
    # no chat template in the released files: the processor's own
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    assert loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|User|>: <image>\nHi\n\n<|Assistant|>:"
    )


def test_a_tokenizer_gets_the_originals_tokens_as_special_ones_in_its_order():
    """The original processor adds, where missing: the pad token, `<image>`, the five grounding
    tokens, then the two roles, each as a special token (ids in that order after the vocabulary)."""
    bare = train_bpe(["hello world"] * 10, [], vocab_size=280, eos_token="<|endoftext|>")
    bare.add_special_tokens({"bos_token": tiny.BOS})
    bare.pad_token = None
    n = len(bare)
    processor = DeepseekVLV2Processor(bare, candidate_resolutions=[[112, 112]])
    added = [
        tiny.PAD,
        "<image>",
        "<|ref|>",
        "<|/ref|>",
        "<|det|>",
        "<|/det|>",
        "<|grounding|>",
        "<|User|>",
        "<|Assistant|>",
    ]
    assert bare.convert_tokens_to_ids(added) == list(range(n, n + len(added)))
    assert set(added) <= set(bare.all_special_tokens) and bare.pad_token == tiny.PAD
    assert processor.image_token_id == n + 1
    ids = bare.encode("<|User|>: <|ref|>", add_special_tokens=False)
    assert ids[0] == n + 7 and ids[-1] == n + 2  # each one token, never split


def test_a_tokenizer_without_bos_is_refused():
    bare = train_bpe(["hello world"] * 10, [], vocab_size=280, eos_token="<|endoftext|>")
    with pytest.raises(ValueError, match="the tokenizer has no bos_token"):
        DeepseekVLV2Processor(bare)


def test_an_unsupported_sft_format_is_refused(tok):
    with pytest.raises(ValueError, match="sft_format 'deepseekv2' is not supported"):
        DeepseekVLV2Processor(tok, sft_format="deepseekv2")
