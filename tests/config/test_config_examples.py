"""Every example config in configs/ loads with its schema and survives a dump round-trip.

Convention: files named `sft_*.yaml` are SFTConfig files, all others TrainConfig.
"""

from pathlib import Path

import pytest

from vlrl.config import SFTConfig, TrainConfig, dump_config, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def schema_for(path: Path) -> type[TrainConfig] | type[SFTConfig]:
    return SFTConfig if path.name.startswith("sft_") else TrainConfig


def test_examples_exist():
    assert {p.name for p in CONFIGS} >= {"grpo_tiny.yaml", "grpo_qwen2_5_vl_7b.yaml", "sft_tiny.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path, schema=schema_for(path))
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_config(cfg))
    assert load_config(dumped, schema=schema_for(path)) == cfg
