"""Values the schema refuses although pydantic's lax mode would take them: booleans as numbers,
infinite or NaN floats, unknown devices, seeds that would collide."""

import pytest
from pydantic import ValidationError

from vlrl.config import ConfigError, TrainSection, load_config

REQUIRED = ["model.path=/ckpt", "data.train=train.jsonl"]


def load(*overrides: str):
    return load_config(None, [*REQUIRED, *overrides])


@pytest.mark.parametrize(
    "override",
    [
        "train.lr=true",
        "rollout.group_size=false",
        "model.group_lr={vision: true}",
        "monitor.format_rise=true",
    ],
)
def test_booleans_are_not_numbers(override):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError) as info:
        load(override)
    assert f"{key}: must be a number, not true or false" in str(info.value)


def test_booleans_inside_number_lists_are_refused():
    with pytest.raises(ConfigError, match=r"reward\.weights: must be a number, not true or false"):
        load("reward.weights=[1.0, true]")


def test_booleans_are_refused_in_yaml_files_too(write_yaml):
    path = write_yaml("model: {path: m}\ndata: {train: t.jsonl}\ntrain: {lr: yes}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: train.lr: must be a number, not true or false (got True)"


@pytest.mark.parametrize(
    "override",
    ["train.lr=.inf", "train.lr=nan", "train.lr=inf", "model.lora.alpha=.nan", "reward.fallback=-.inf"],
)
def test_infinite_and_nan_floats_are_refused(override):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=f"{key}: Input should be a finite number"):
        load(override)


def test_assigning_a_bool_or_nan_is_refused():
    section = TrainSection()
    with pytest.raises(ValidationError):
        section.lr = True
    with pytest.raises(ValidationError):
        section.max_grad_norm = float("nan")


def test_numbers_written_as_strings_and_real_booleans_still_load():
    cfg = load("train.lr=1e-5", "rollout.temperature=0.7", "model.freeze=vision")
    assert cfg.train.lr == 1e-5 and type(cfg.train.lr) is float  # YAML reads 1e-5 as a string
    assert cfg.model.freeze == ["vision"]


def test_resample_rounds_are_bounded_so_round_seeds_stay_inside_their_step():
    # grpo.py seeds round r of step s with (seed * 1_000_003 + s) * 16 + r: r = 16 is step s + 1's round 0.
    assert load("rollout.max_resample_rounds=15").rollout.max_resample_rounds == 15
    with pytest.raises(
        ConfigError, match=r"rollout\.max_resample_rounds: Input should be less than or equal to 15"
    ):
        load("rollout.max_resample_rounds=16")


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_supported_devices_load(device):
    assert load(f"train.device={device}").train.device == device


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x", "CPU", "mps"])
def test_unsupported_device_names_train_device(device):
    with pytest.raises(ConfigError) as info:
        load(f"train.device={device}")
    assert str(info.value) == (
        f"override 'train.device={device}': train.device: must be auto, cpu, cuda or cuda:N (got '{device}')"
    )
