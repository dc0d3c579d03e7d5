"""Adapter contracts per family: input shapes, image placement, positions, module groups, boxes."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from vlrl.data.prompts import TEMPLATES
from vlrl.data.sample import Sample
from vlrl.models.adapters import InternVLAdapter, adapter_class
from vlrl.models.batching import collate
from vlrl.models.loading import load_model
from vlrl.rewards.perception import to_pixels

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "internvl", "idefics3")
PLAIN = TEMPLATES["answer_only"]


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return {f: load_model(tiny_models[f]) for f in FAMILIES}


def _sample(images, question="How many shapes?", **kw):
    return Sample(id="s", question=question, answer="1", images=list(images), **kw)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_inputs_have_grid_and_merged_tokens(loaded, images, family):
    lm = loaded[family]
    enc = lm.adapter.encode(_sample([images["small"], images["big"]]), PLAIN)
    grid = enc.vision["image_grid_thw"]
    # 112x112 -> 8x8 patches of 14 px. 300x180 = 54000 px exceeds the tiny processor's budget of
    # 4 * 112^2 = 50176, so smart_resize scales it to 280x168 (multiples of 28) = 20x12 patches.
    assert grid.tolist() == [[1, 8, 8], [1, 12, 20]]
    # Each patch row holds C * temporal_patch * 14 * 14 = 3 * 2 * 196 values.
    assert enc.vision["pixel_values"].shape == (64 + 12 * 20, 1176)
    n_image_tokens = (enc.tokens["input_ids"] == lm.model.config.image_token_id).sum().item()
    assert n_image_tokens == (64 + 12 * 20) // 4  # 2x2 merge
    assert enc.tokens["mm_token_type_ids"].sum().item() == n_image_tokens


def test_internvl_inputs_are_tiles_with_fixed_tokens_each(loaded, images):
    lm = loaded["internvl"]
    small = lm.adapter.encode(_sample([images["small"]]), PLAIN)
    big = lm.adapter.encode(_sample([images["big"]]), PLAIN)
    assert small.vision["pixel_values"].shape == (1, 3, 112, 112)
    # A 5:3 image tiles as 2x1 plus a thumbnail.
    assert big.vision["pixel_values"].shape == (3, 3, 112, 112)
    ctx = lm.model.config.image_token_id
    per_tile = lm.model.config.image_seq_length
    assert (small.tokens["input_ids"] == ctx).sum().item() == per_tile == 16
    assert (big.tokens["input_ids"] == ctx).sum().item() == 3 * per_tile
    assert "mm_token_type_ids" not in small.tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_image_tokens_sit_where_the_markers_are(loaded, images, family):
    lm = loaded[family]
    tok = lm.adapter.tokenizer
    question = "Image 1: <image>\nImage 2: <image>\nWhich image has more circles?"
    enc = lm.adapter.encode(_sample([images["small"], images["big"]], question=question), PLAIN)
    ids = enc.tokens["input_ids"].tolist()
    image_id = lm.model.config.image_token_id
    runs, start = [], None  # (start, end) of each run of image tokens
    for i, t in enumerate([*ids, -1]):
        if t == image_id and start is None:
            start = i
        elif t != image_id and start is not None:
            runs.append((start, i))
            start = None
    if family == "internvl":
        assert [e - s for s, e in runs] == [16, 48]  # 1 tile, then 3 tiles: image order kept
    elif family == "idefics3":
        assert [e - s for s, e in runs] == [16, 16]  # every image is resized to one tile
    else:
        assert [e - s for s, e in runs] == [16, (12 * 20) // 4]
    before_first = tok.decode(ids[: runs[0][0]], skip_special_tokens=True)
    between = tok.decode(ids[runs[0][1] : runs[1][0]], skip_special_tokens=True)
    after = tok.decode(ids[runs[1][1] :], skip_special_tokens=True)
    assert before_first.rstrip().endswith("Image 1:")
    assert between.strip() == "Image 2:"
    assert after.lstrip().startswith("Which image has more circles?")


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_mrope_positions_are_3d_and_spread_over_the_image(loaded, images, family):
    lm = loaded[family]
    items = [lm.adapter.encode(_sample([images["small"]]), PLAIN), lm.adapter.encode(_sample([]), PLAIN)]
    batch = collate(items, lm.adapter.tokenizer.pad_token_id, padding_side="left")
    pos = lm.adapter.position_ids(lm.model, batch)
    assert pos.shape == (3, 2, batch["input_ids"].shape[1])  # (t, h, w) x batch x length
    row = batch["input_ids"][0]
    img = row == lm.model.config.image_token_id
    h, w = pos[1, 0, img], pos[2, 0, img]
    # 16 image tokens on a 4x4 grid: 4 distinct heights and widths, one temporal index.
    assert h.unique().numel() == 4 and w.unique().numel() == 4
    assert pos[0, 0, img].unique().numel() == 1
    # After the image, text positions advance identically on all axes.
    last = batch["attention_mask"][0].bool() & ~img
    tail = pos[:, 0, last][:, -5:]
    assert torch.equal(tail[0], tail[1]) and torch.equal(tail[1], tail[2])
    # The text-only row is plain 1-D counting from its first real token.
    mask = batch["attention_mask"][1].bool()
    assert pos[0, 1, mask].tolist() == list(range(int(mask.sum())))


def test_internvl_positions_are_1d_and_ignore_left_padding(loaded, images):
    lm = loaded["internvl"]
    items = [lm.adapter.encode(_sample([images["small"]]), PLAIN), lm.adapter.encode(_sample([]), PLAIN)]
    batch = collate(items, lm.adapter.tokenizer.pad_token_id, padding_side="left")
    pos = lm.adapter.position_ids(lm.model, batch)
    assert pos.shape == batch["input_ids"].shape
    mask = batch["attention_mask"][1].bool()
    assert pos[1, mask].tolist() == list(range(int(mask.sum())))


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_forward_matches_single(loaded, images, family):
    lm = loaded[family]
    items = [
        lm.adapter.encode(_sample([images["small"]]), PLAIN, response="<answer>1</answer>"),
        lm.adapter.encode(_sample([images["big"]]), PLAIN),
    ]
    batch = collate(items, lm.adapter.tokenizer.pad_token_id, padding_side="right")
    with torch.no_grad():
        both = lm.model(**batch).logits
        alone = lm.model(**collate(items[:1], lm.adapter.tokenizer.pad_token_id)).logits
    n = items[0].length
    torch.testing.assert_close(both[0, :n], alone[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_module_groups_cover_every_parameter_exactly_once(loaded, family):
    lm = loaded[family]
    groups = lm.adapter.parameter_groups(lm.model)
    assert list(groups) == list(lm.adapter.groups())
    assert {"vision", "connector", "language"} <= set(groups)
    names = [n for g in groups.values() for n, _ in g]
    assert len(names) == len(set(names))
    assert set(names) == {n for n, _ in lm.model.named_parameters()}
    assert all(groups.values())
    # Spot checks that the split is the architectural one.
    assert all("embed_tokens" not in n for n, _ in groups["vision"])
    assert any("lm_head" in n for n, _ in groups["language"])


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_select_only_the_requested_group(tiny_models, family):
    lm = load_model(tiny_models[family])
    modules, _ = lm.adapter.lora_targets(lm.model, ("language",))
    peft_model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=modules))
    lora = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert lora
    groups = lm.adapter.parameter_groups(peft_model)
    lora_groups = {g for g, params in groups.items() for n, _ in params if "lora_" in n}
    assert lora_groups == {"language"}


@pytest.mark.parametrize("family", FAMILIES)
def test_box_round_trip_through_the_family_convention(loaded, family):
    adapter = loaded[family].adapter
    box = [30, 18, 150, 90]
    written = adapter.box_from_pixels(box, (300, 180))
    # Read back as the box rewards read a completion, in the convention the adapter declares.
    model_size = adapter.model_image_size((300, 180))
    [(back, _)] = to_pixels([(written, None)], adapter.box_convention, (300, 180), model_size)
    assert back == pytest.approx(box, abs=1.0)


def test_box_conventions_differ_per_family(loaded):
    box = [30, 18, 150, 90]
    assert loaded["qwen2_vl"].adapter.box_from_pixels(box, (300, 180)) == [100, 100, 500, 500]
    assert loaded["internvl"].adapter.box_from_pixels(box, (300, 180)) == [100, 100, 500, 500]
    # Qwen2.5-VL: pixels of the resized 280x168 image (scale 280/300): [28, 16.8, 140, 84].
    assert loaded["qwen2_5_vl"].adapter.box_from_pixels(box, (300, 180)) == [28, 17, 140, 84]


@pytest.mark.parametrize("family", FAMILIES)
def test_placeholders_include_the_image_token(loaded, family):
    lm = loaded[family]
    assert lm.model.config.image_token_id in lm.adapter.placeholder_token_ids()


@pytest.mark.parametrize("family", FAMILIES)
def test_response_is_appended_after_the_prompt_with_end_of_turn(loaded, images, family):
    adapter = loaded[family].adapter
    prompt = adapter.encode(_sample([images["small"]]), PLAIN)
    full = adapter.encode(_sample([images["small"]]), PLAIN, response="<answer>3</answer>")
    assert full.prompt_length == prompt.length
    assert torch.equal(full.tokens["input_ids"][: prompt.length], prompt.tokens["input_ids"])
    response = full.tokens["input_ids"][prompt.length :]
    assert response[-1].item() == adapter.tokenizer.eos_token_id
    assert adapter.tokenizer.decode(response[:-1]) == "<answer>3</answer>"


def test_unsupported_model_type_lists_supported():
    with pytest.raises(
        ValueError,
        match="not supported; supported: aria, deepseek_vl_v2, deepseek_vl_v2/deepseek_v2, "
        "deepseek_vl_v2/deepseek_v3, glm4v, glm4v_moe, idefics3, internvl,",
    ) as e:
        adapter_class("llava")
    assert all(name in str(e.value) for name in ("qwen3_vl_moe", "qwen3_5_moe", "internvl/qwen3_moe"))
    assert adapter_class("internvl") is InternVLAdapter


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.path"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_idefics3_batch_pads_the_image_axis_and_matches_single_samples(loaded, images):
    """Samples with 2, 1 and 0 images batch together (the image axis is zero-padded, as
    Idefics3's processor does) and each row's logits equal that sample run alone."""
    lm = loaded["idefics3"]
    question = "Image 1: <image>\nImage 2: <image>\nWhich image has more circles?"
    encoded = [
        lm.adapter.encode(_sample([images["small"], images["big"]], question=question), PLAIN),
        lm.adapter.encode(_sample([images["big"]]), PLAIN),
        lm.adapter.encode(_sample([]), PLAIN),
    ]
    pad = lm.adapter.tokenizer.pad_token_id
    batch = collate(encoded, pad)
    assert batch["pixel_values"].shape[:2] == (2, 2)
    assert batch["pixel_values"][1, 1].abs().sum() == 0  # the padding image
    with torch.no_grad():
        together = lm.model(**batch).logits
        for row, enc in enumerate(encoded):
            alone = lm.model(**collate([enc], pad)).logits[0]
            torch.testing.assert_close(together[row, : enc.length], alone, atol=1e-5, rtol=1e-4)
