"""Checkpoints: exact resume of optimizer / scheduler / RNG, atomic saves, discovery, LoRA merging."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_rl import COMMON
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForImageTextToText

from vlrl.config import SFTConfig, load_config
from vlrl.data.prompts import TEMPLATES
from vlrl.data.sample import Sample
from vlrl.models.batching import collate
from vlrl.models.loading import load_model, load_processor
from vlrl.models.processors import torchvision_usable
from vlrl.synth import generate_dataset
from vlrl.training.checkpoint import (
    STATE_FILE,
    checkpoint_dir,
    complete_checkpoints,
    latest_checkpoint,
    load_trainer_state,
    merge_lora,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from vlrl.training.sampler import PromptSampler
from vlrl.training.schedule import build_scheduler
from vlrl.training.sft import SFTTrainer

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "internvl", "idefics3")


def _optimizer(model):
    """AdamW over the trainable parameters and a cosine schedule, as the trainer builds them."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return optimizer, build_scheduler(optimizer, "cosine", 1, 10)


def _train(model, optimizer, scheduler, steps=2):
    """A few updates with a cheap loss, so the optimizer holds non-trivial moments."""
    for _ in range(steps):
        loss = sum((p.float() ** 2).sum() for p in model.parameters() if p.requires_grad)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def _draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def _fake_checkpoint(output_dir, step, complete=True, suffix=""):
    path = Path(f"{checkpoint_dir(output_dir, step)}{suffix}")
    path.mkdir(parents=True)
    if complete:
        (path / STATE_FILE).write_bytes(b"")
    return path


@pytest.fixture
def trained(tiny_models):
    lm = load_model(tiny_models["qwen2_vl"])
    optimizer, scheduler = _optimizer(lm.model)
    _train(lm.model, optimizer, scheduler)
    return lm, optimizer, scheduler


def test_resume_restores_optimizer_scheduler_rng_and_trainer_state(trained, tmp_path):
    lm, optimizer, scheduler = trained
    sampler = PromptSampler(10, seed=0)
    sampler.next_batch(3)
    trainer_state = {"step": 2, "sampler": sampler.state_dict(), "config": "train:\n  lr: 0.001\n"}
    trainer_state["history"] = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": float("nan")}]
    step_dir = checkpoint_dir(tmp_path, 2)
    save_checkpoint(step_dir, lm.model, lm.processor, optimizer, scheduler, trainer_state)
    after_save = _draws()
    _draws()  # the run goes on (or dies) and moves every generator

    resumed = load_model(step_dir)
    new_optimizer, new_scheduler = _optimizer(resumed.model)
    restored = load_trainer_state(step_dir, new_optimizer, new_scheduler)

    assert _draws() == after_save
    assert restored["step"] == 2 and restored["config"] == trainer_state["config"]
    assert restored["history"][0] == {"step": 1, "loss": 0.5}
    assert np.isnan(restored["history"][1]["loss"])
    new_sampler = PromptSampler(10, seed=0)
    new_sampler.load_state_dict(restored["sampler"])
    assert new_sampler.next_batch(4) == sampler.next_batch(4)
    assert new_scheduler.state_dict() == scheduler.state_dict()
    old, new = optimizer.state_dict(), new_optimizer.state_dict()
    assert new["param_groups"] == old["param_groups"]
    assert old["state"].keys() == new["state"].keys() and len(old["state"]) > 0
    for index, moments in old["state"].items():
        for name, value in moments.items():  # step, exp_avg, exp_avg_sq
            assert torch.equal(new["state"][index][name], value), (index, name)


def test_saved_model_loads_with_plain_transformers(trained, tmp_path):
    lm, optimizer, scheduler = trained
    step_dir = checkpoint_dir(tmp_path, 2)
    save_checkpoint(step_dir, lm.model, lm.processor, optimizer, scheduler, {"step": 2})
    assert step_dir == tmp_path / "checkpoints" / "step_000002"
    assert not step_dir.with_name("step_000002.tmp").exists()
    assert (step_dir / "model.safetensors").is_file() and (step_dir / STATE_FILE).is_file()
    loaded = AutoModelForImageTextToText.from_pretrained(step_dir)
    expected = lm.model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert load_processor(step_dir).tokenizer.get_vocab() == lm.processor.tokenizer.get_vocab()


def test_a_save_killed_midway_leaves_no_checkpoint_and_the_next_save_recovers(trained, tmp_path, monkeypatch):
    lm, optimizer, scheduler = trained
    save_checkpoint(checkpoint_dir(tmp_path, 1), lm.model, lm.processor, optimizer, scheduler, {"step": 1})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    step_dir = checkpoint_dir(tmp_path, 2)
    with monkeypatch.context() as patch:
        patch.setattr(lm.processor, "save_pretrained", killed)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(step_dir, lm.model, lm.processor, optimizer, scheduler, {"step": 2})
    assert step_dir.with_name("step_000002.tmp").is_dir() and not step_dir.exists()
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 1)

    save_checkpoint(step_dir, lm.model, lm.processor, optimizer, scheduler, {"step": 2})
    assert latest_checkpoint(tmp_path) == step_dir
    assert not step_dir.with_name("step_000002.tmp").exists()


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"paths": [Path("a")]}, r"trainer_state\['paths'\]\[0\] is a \w*Path"),
        ({"history": [{"loss": np.float64(0.5)}]}, r"trainer_state\['history'\]\[0\]\['loss'\] is a float64"),
    ],
)
def test_trainer_state_must_be_plain_data(trained, tmp_path, state, message):
    lm, optimizer, scheduler = trained
    with pytest.raises(TypeError, match=message):
        save_checkpoint(checkpoint_dir(tmp_path, 1), lm.model, lm.processor, optimizer, scheduler, state)


def test_latest_checkpoint_picks_the_highest_complete_step(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    _fake_checkpoint(tmp_path, 2)
    best = _fake_checkpoint(tmp_path, 10)
    _fake_checkpoint(tmp_path, 11, suffix=".tmp")  # killed while saving
    _fake_checkpoint(tmp_path, 12, complete=False)
    (tmp_path / "checkpoints" / "notes").mkdir()
    assert latest_checkpoint(tmp_path) == best


def test_resolve_resume(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # fresh run
    best = _fake_checkpoint(tmp_path, 3)
    assert resolve_resume("auto", tmp_path) == best
    assert resolve_resume(str(best), tmp_path) == best
    for bad in (tmp_path / "missing", _fake_checkpoint(tmp_path, 4, complete=False)):
        with pytest.raises(FileNotFoundError, match="train.resume"):
            resolve_resume(str(bad), tmp_path)


def test_prune_keeps_the_latest(tmp_path):
    for step in (1, 2, 3, 4):
        _fake_checkpoint(tmp_path, step)
    prune_checkpoints(tmp_path, None)
    assert len(list((tmp_path / "checkpoints").iterdir())) == 4
    prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000003", "step_000004"]
    with pytest.raises(ValueError, match="keep_last"):
        prune_checkpoints(tmp_path, 0)
    # A resumed run's starting checkpoint stays, beside the last ones.
    _fake_checkpoint(tmp_path, 5)
    prune_checkpoints(tmp_path, 1, keep=tmp_path / "checkpoints" / "step_000003")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000003", "step_000005"]


def test_runs_keep_their_last_checkpoints_and_the_one_they_resumed_from(tiny_models, tmp_path):
    data = generate_dataset("counting", 8, tmp_path / "data", seed=0)
    overrides = [
        *COMMON,
        f"model.path={tiny_models['qwen2_vl']}",
        f"data.train={data['train']}",
        "sft.batch_size=2",
        "train.save_every=1",
        f"train.output_dir={tmp_path / 'run'}",
    ]

    def run(*more):
        SFTTrainer(load_config(None, [*overrides, *more], schema=SFTConfig)).train()
        return [step for step, _ in complete_checkpoints(tmp_path / "run")]

    assert run("train.steps=4", "train.keep_last_checkpoints=2") == [3, 4]
    assert run("train.steps=7", "train.keep_last_checkpoints=1", "train.resume=auto") == [4, 7]
    assert run("train.steps=8", "train.resume=auto") == [4, 7, 8]  # unset: nothing is deleted


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_lora_loads_with_plain_transformers_and_matches(tiny_models, images, tmp_path, family):
    lm = load_model(tiny_models[family])
    modules, _ = lm.adapter.lora_targets(lm.model, ("language",))
    model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=modules))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft initialises B to 0, which would make the adapter a no-op
            torch.nn.init.normal_(param, std=0.1)
    optimizer, scheduler = _optimizer(model)
    step_dir = checkpoint_dir(tmp_path, 1)
    save_checkpoint(step_dir, model, lm.processor, optimizer, scheduler, {"step": 1})
    assert (step_dir / "adapter_model.safetensors").is_file()
    assert not (step_dir / "model.safetensors").exists()  # the adapter only

    merged_dir = merge_lora(step_dir, tmp_path / "merged")
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())

    sample = Sample(id="s", question="How many shapes?", answer="1", images=[images["small"]])
    batch = collate([lm.adapter.encode(sample, TEMPLATES["answer_only"])], lm.adapter.tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model(**batch).logits
        with model.disable_adapter():
            base = model(**batch).logits
        got = merged(**batch).logits
    assert not torch.allclose(expected, base, atol=1e-3)  # the adapter changes the outputs
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert load_processor(merged_dir).tokenizer.get_vocab() == lm.processor.tokenizer.get_vocab()
    assert "The folder holds LoRA adapters only" in (step_dir / "README.md").read_text()
    card = (merged_dir / "README.md").read_text()
    assert f"full weights: the LoRA adapters of `{step_dir}` merged into `{tiny_models[family]}`" in card
    assert f'AutoProcessor.from_pretrained("{merged_dir}")' in card


def test_merge_lora_needs_an_adapter_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        merge_lora(tmp_path, tmp_path / "merged")


def test_a_run_checkpoint_says_how_to_load_it_and_its_snippet_works(tiny_models, tmp_path):
    data = generate_dataset("counting", 4, tmp_path / "data", seed=0)
    overrides = [*COMMON, f"model.path={tiny_models['qwen2_vl']}", f"data.train={data['train']}"]
    run = [*overrides, "sft.batch_size=2", "train.steps=1", f"train.output_dir={tmp_path / 'run'}"]
    SFTTrainer(load_config(None, run, schema=SFTConfig)).train()
    step_dir = tmp_path / "run" / "checkpoints" / "step_000001"
    card = (step_dir / "README.md").read_text()
    assert (
        f"A `qwen2_vl` vision-language model: full weights after step 1 of a vlrl run from `{tiny_models['qwen2_vl']}`"
        in card
    )
    snippet = card.split("```python\n")[1].split("```")[0]
    assert len(snippet.splitlines()) == 3 and snippet.startswith("import vlrl")
    # A fresh interpreter, as a user's script: the snippet gives a processor with its image processor.
    check = snippet + "print(type(processor.image_processor).__name__, type(model).__name__)\n"
    out = subprocess.run([sys.executable, "-c", check], check=True, capture_output=True, text=True).stdout
    assert out.startswith("Qwen2VLImageProcessor") and out.split()[1] == "Qwen2VLForConditionalGeneration"
    if not torchvision_usable():  # the trap the card warns of: without `import vlrl`, a bare tokenizer
        without = snippet.replace("import vlrl", "pass") + "print(type(processor).__name__)\n"
        out = subprocess.run(
            [sys.executable, "-c", without], check=True, capture_output=True, text=True
        ).stdout
        assert out.strip() == "Qwen2Tokenizer"
