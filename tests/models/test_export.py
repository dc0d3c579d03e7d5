"""export_weights: the names, layouts and values save_pretrained writes, for every tiny family.

A model loaded from the exported tensors alone (plus config and processor files) must compute the
original's logits exactly: that is what a vLLM engine or a generation server receives at a sync.
The tiny InternVL with a Qwen3-MoE language model built here (InternVL3.5-MoE's layout) is the
case where the conversion matters: its experts are fused 3-D tensors in memory and per-expert
matrices in the files, and its output embedding is tied to the input one.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForImageTextToText, Qwen3MoeConfig

from vlrl.data.prompts import TEMPLATES
from vlrl.data.sample import Sample
from vlrl.models.batching import collate
from vlrl.models.export import export_weights
from vlrl.models.loading import load_model
from vlrl.models.tiny.factory import FAMILIES

EXPERTS = 4


def _files(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor in the safetensors files of a checkpoint folder."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            names = f.keys()  # a safetensors file handle is not iterable
            out.update({name: f.get_tensor(name) for name in names})
    return out


def _copy_side_files(source: Path, dest: Path) -> None:
    """Config, generation config, tokenizer and processor files: everything but the weights."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith("model.safetensors"):
            shutil.copy(path, dest / path.name)


def _write_checkpoint(tensors: dict[str, torch.Tensor], side_files: Path, dest: Path) -> Path:
    """A checkpoint folder holding `tensors` as its weights and `side_files`' other files."""
    _copy_side_files(side_files, dest)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest / "model.safetensors"))
    return dest


def _logits(lm, images) -> torch.Tensor:
    sample = Sample(id="s", question="How many shapes?", answer="1", images=[images["small"]])
    enc = lm.adapter.encode(sample, TEMPLATES["answer_only"], response="<answer>2</answer>")
    with torch.no_grad():
        return lm.model(**collate([enc], lm.adapter.tokenizer.pad_token_id)).logits


def _check_export(lm, source: Path, images, tmp_path: Path) -> dict[str, torch.Tensor]:
    """Assert that the export is what save_pretrained writes and reloads to the same logits; return it."""
    exported = {name: tensor.clone() for name, tensor in export_weights(lm.model)}
    lm.model.save_pretrained(tmp_path / "saved")
    saved = _files(tmp_path / "saved")
    assert sorted(exported) == sorted(saved)
    for name, tensor in saved.items():
        assert exported[name].shape == tensor.shape, name
        assert torch.equal(exported[name], tensor), name
    # A fresh model from the exported tensors only.
    fresh = load_model(_write_checkpoint(exported, source, tmp_path / "exported"))
    assert torch.equal(_logits(fresh, images), _logits(lm, images))
    return exported


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_is_what_save_pretrained_writes_and_reloads_exactly(family, tiny_models, images, tmp_path):
    lm = load_model(tiny_models[family])
    _check_export(lm, tiny_models[family], images, tmp_path)


@pytest.fixture(scope="module")
def internvl_moe(tiny_models, tmp_path_factory) -> Path:
    """A tiny InternVL whose language model is Qwen3-MoE (4 experts, top 2) with tied embeddings,
    saved with the micro InternVL's processor."""
    dense = tiny_models["internvl"]
    config = AutoConfig.from_pretrained(dense)
    text = config.text_config
    config.text_config = Qwen3MoeConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        # Not 2 x hidden: fused gate_up [E, 2I, H] and per-expert [I, H] differ in shape as well as name.
        moe_intermediate_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        head_dim=32,
        num_experts=EXPERTS,
        num_experts_per_tok=2,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        tie_word_embeddings=True,
    )
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    out = tmp_path_factory.mktemp("internvl_moe")
    _copy_side_files(dense, out)  # first: save_pretrained then writes this model's config.json
    model.save_pretrained(out)
    return out


def test_moe_experts_are_exported_per_expert_with_ties_dropped(internvl_moe, images, tmp_path):
    lm = load_model(internvl_moe)
    memory = lm.model.state_dict()
    fused = "model.language_model.layers.0.mlp.experts.gate_up_proj"
    assert memory[fused].shape == (EXPERTS, 2 * 48, 64)
    assert lm.model.lm_head.weight is lm.model.get_input_embeddings().weight
    exported = _check_export(lm, internvl_moe, images, tmp_path)
    # The export is the checkpoint layout, not the in-memory one: without the conversion this test
    # would compare state_dict() with itself and could not fail.
    assert fused not in exported and not any(name.endswith("lm_head.weight") for name in exported)
    layer0 = "language_model.model.layers.0.mlp.experts"
    assert exported[f"{layer0}.3.gate_proj.weight"].shape == (48, 64)
    assert exported[f"{layer0}.3.down_proj.weight"].shape == (64, 48)
    # Expert 3's gate rows are the first I rows of its fused gate_up matrix.
    assert torch.equal(exported[f"{layer0}.3.gate_proj.weight"], memory[fused][3, :48])
    assert torch.equal(exported[f"{layer0}.3.up_proj.weight"], memory[fused][3, 48:])
    assert len([n for n in exported if ".mlp.experts." in n]) == 2 * EXPERTS * 3


def test_lora_exports_the_merged_weights_under_base_names(internvl_moe, images, tmp_path):
    lm = load_model(internvl_moe)
    experts = [
        f"model.language_model.layers.{i}.mlp.experts.{p}"
        for i in (0, 1)
        for p in ("gate_up_proj", "down_proj")
    ]
    config = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], target_parameters=experts, init_lora_weights=False
    )
    peft_model = get_peft_model(lm.model, config)
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}

    exported = {name: tensor.clone() for name, tensor in export_weights(peft_model)}

    # What `vlrl merge` would write: the adapters folded in, saved as a plain model.
    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    reference = _files(tmp_path / "merged")
    assert sorted(exported) == sorted(reference)
    assert all(torch.allclose(exported[k], v, atol=1e-6) for k, v in reference.items())
    # The adapters changed these weights (so the comparison above is not with the base model).
    base = _files(internvl_moe)
    for name in ("layers.0.self_attn.q_proj.weight", "layers.1.mlp.experts.2.up_proj.weight"):
        name = f"language_model.model.{name}"
        assert not torch.allclose(exported[name], base[name]), name
    # The policy is unmerged again: adapters separate, base weights as they were.
    after = peft_model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.allclose(after[k], v, atol=1e-6) for k, v in before.items())
    # And the merged weights reload into the model the peft model computes.
    fresh = load_model(_write_checkpoint(exported, internvl_moe, tmp_path / "exported"))
    lm.model = peft_model
    assert torch.allclose(_logits(fresh, images), _logits(lm, images), atol=1e-5)


def test_conversions_run_one_layer_at_a_time(internvl_moe, monkeypatch):
    """Peak memory grows by one layer: transformers' revert is called on one layer's tensors at a
    time (the vision layer, each of the 2 language layers), then on the rest (embeddings, norms,
    connector, lm_head)."""
    import vlrl.models.export as export

    calls = []

    def recording(model, tensors):
        calls.append({re.sub(r"^(.*?\.\d+)\..*", r"\1", name) for name in tensors})
        return revert(model, tensors)

    revert = export.revert_weight_conversion
    monkeypatch.setattr(export, "revert_weight_conversion", recording)
    names = [name for name, _ in export_weights(load_model(internvl_moe).model)]
    layers = [c.pop() for c in calls if len(c) == 1 and re.search(r"\.\d+$", next(iter(c)))]
    assert layers == [
        "model.vision_tower.encoder.layer.0",
        "model.language_model.layers.0",
        "model.language_model.layers.1",
    ]
    assert len(calls) == 4  # and one call for every name outside the layers
    assert len(names) == len(set(names)) == len(_files(internvl_moe))


def test_fsdp2_shards_are_gathered_one_tensor_at_a_time(internvl_moe, tmp_path):
    """A model sharded by FSDP2 (DTensor parameters; one gloo process here) exports the same
    tensors as the unsharded model, as plain tensors, with the tied lm_head still left out."""
    import torch.distributed as dist

    from vlrl.distributed.fsdp import shard_model

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this test process")
    plain = {name: tensor.clone() for name, tensor in export_weights(load_model(internvl_moe).model)}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = shard_model(load_model(internvl_moe).model)
        assert type(model.lm_head.weight).__name__ == "DTensor"
        sharded = dict(export_weights(model))
    finally:
        dist.destroy_process_group()
    assert sorted(sharded) == sorted(plain)
    assert all(type(t) is torch.Tensor and torch.equal(t, plain[name]) for name, t in sharded.items())
