"""What every run prints before its first step: the parameter table and where a resume starts."""

from __future__ import annotations

import re

import pytest
from helpers_rl import COMMON

from vlrl.cli import main
from vlrl.config import SFTConfig, load_config
from vlrl.synth import generate_dataset
from vlrl.training.sft import SFTTrainer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_dataset("counting", 16, tmp_path_factory.mktemp("run_data"), seed=0)


def table(out: str) -> dict[str, tuple[int, int]]:
    """The printed table's rows: group -> (trainable, frozen)."""
    rows = re.findall(r"^(\w+) +([\d,]+) +([\d,]+)$", out, re.MULTILINE)
    return {g: (int(t.replace(",", "")), int(f.replace(",", ""))) for g, t, f in rows}


def lora_counts(trainer) -> dict[str, tuple[int, int]]:
    """group -> (LoRA parameters, the others) read off the model itself."""
    found = {}
    for group, params in trainer.adapter.parameter_groups(trainer.model).items():
        lora = sum(p.numel() for n, p in params if "lora_" in n)
        found[group] = (lora, sum(p.numel() for _, p in params) - lora)
    return found


def test_sft_prints_the_table_then_resumes_saying_from_where(tiny_models, data, tmp_path, capsys):
    cfg_file = tmp_path.parent / "empty.yaml"
    cfg_file.write_text("{}\n")
    args = [
        "sft",
        str(cfg_file),
        *COMMON,
        f"model.path={tiny_models['qwen2_vl']}",
        f"data.train={data['train']}",
        "sft.batch_size=2",
        "train.steps=1",
        "model.freeze=[vision]",
        f"train.output_dir={tmp_path}",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"^parameters +trainable +frozen$", out, re.MULTILINE)
    rows = table(out)
    assert list(rows) == ["vision", "connector", "language", "total"]
    assert rows["vision"][0] == 0 and rows["vision"][1] > 0  # frozen by model.freeze
    assert rows["language"][0] > 0 and rows["language"][1] == 0
    assert rows["total"] == tuple(
        sum(rows[g][i] for g in ("vision", "connector", "language")) for i in (0, 1)
    )
    assert "resumed from" not in out

    assert main([*args, "train.steps=2", "train.resume=auto"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from step 1 ({tmp_path / 'checkpoints' / 'step_000001'})\n" in out
    assert table(out) == rows


def test_with_lora_the_adapters_are_their_groups_trainable_parameters(tiny_models, data, tmp_path, capsys):
    overrides = [
        *COMMON,
        f"model.path={tiny_models['qwen2_vl']}",
        f"data.train={data['train']}",
        "model.lora.enabled=true",
        "model.lora.target=all",
        "train.steps=1",
        f"train.output_dir={tmp_path}",
    ]
    trainer = SFTTrainer(load_config(None, overrides, schema=SFTConfig))
    rows = table(capsys.readouterr().out)
    expected = lora_counts(trainer)
    assert {g: rows[g] for g in expected} == expected
    assert all(trainable > 0 for trainable, _ in expected.values())
