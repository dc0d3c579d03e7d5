"""`vlrl config` without a file: the defaults as YAML, `???` at each required key, read back once filled."""

import pytest
import yaml

from vlrl.cli import main
from vlrl.config import ConfigError, SFTConfig, TrainConfig, config_template, load_config

REQUIRED = ["model.path=/ckpt", "data.train=train.jsonl"]


def _printed(capsys, *argv: str) -> dict:
    assert main(["config", *argv]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_vlrl_config_without_a_file_prints_the_defaults_with_required_keys_marked(capsys):
    tree = _printed(capsys)
    assert tree["model"]["path"] == "???"
    assert tree["data"]["train"] == "???"
    assert tree["rollout"]["group_size"] == 8
    assert tree["reward"]["functions"] == ["format", "accuracy"]
    assert tree["stages"] == []
    assert "sft" not in tree


def test_overrides_without_a_file_apply_to_the_defaults_and_fill_required_keys(capsys):
    tree = _printed(capsys, "rollout.top_k=5", "model.path=/m")
    assert tree["rollout"]["top_k"] == 5
    assert tree["model"]["path"] == "/m"
    assert tree["data"]["train"] == "???"


def test_sft_defaults_have_the_sft_section(capsys):
    tree = _printed(capsys, "--sft", "sft.batch_size=3")
    assert tree["sft"]["batch_size"] == 3
    assert "rollout" not in tree and tree["model"]["path"] == "???"


def test_a_filled_in_template_loads_as_the_config_it_describes(write_yaml):
    text = config_template().replace("path: ???", "path: /ckpt").replace("train: ???", "train: train.jsonl")
    assert load_config(write_yaml(text)) == load_config(None, REQUIRED)


def test_an_sft_template_round_trips_too(write_yaml):
    text = config_template(["sft.epochs=2"], schema=SFTConfig)
    text = text.replace("path: ???", "path: /ckpt").replace("train: ???", "train: train.jsonl")
    assert load_config(write_yaml(text), schema=SFTConfig) == load_config(
        None, [*REQUIRED, "sft.epochs=2"], schema=SFTConfig
    )


def test_a_required_key_left_as_question_marks_is_named(write_yaml):
    path = write_yaml(config_template().replace("path: ???", "path: /ckpt"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    # Not the string '???' taken as a data file, to fail later or never.
    assert str(info.value) == f"{path}: data.train: is required: replace ??? with a value"


def test_an_override_fills_a_question_mark_left_in_the_file(write_yaml):
    path = write_yaml(config_template())
    assert load_config(path, REQUIRED) == load_config(None, REQUIRED)


def test_question_marks_in_an_override_are_refused_like_in_a_file():
    with pytest.raises(ConfigError) as info:
        load_config(None, [*REQUIRED, "data.image_root=???"], schema=TrainConfig)
    assert (
        str(info.value)
        == "override 'data.image_root=???': data.image_root: is required: replace ??? with a value"
    )
