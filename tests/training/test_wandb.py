"""wandb options from logging.wandb_*, and a run resumed with train.resume continuing its wandb run."""

from __future__ import annotations

import sys
import types

import pytest
from helpers_rl import COMMON

from vlrl.config import ConfigError, SFTConfig, load_config
from vlrl.synth import generate_dataset
from vlrl.training.metrics import WANDB_RUN_ID_FILE, MetricsLogger
from vlrl.training.sft import SFTTrainer


@pytest.fixture
def fake_wandb(monkeypatch) -> list[dict]:
    """A stand-in `wandb` module; returns the list of keyword arguments of each `wandb.init`."""
    inits: list[dict] = []

    class Run:
        def __init__(self, run_id: str):
            self.id = run_id

        def log(self, metrics, step):
            pass

        def finish(self):
            pass

    def init(**kwargs):
        inits.append(kwargs)
        # wandb makes up an id for a new run and keeps the one it is given.
        return Run(kwargs.get("id", f"new{len(inits)}"))

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return inits


def _start(out, *overrides: str) -> dict:
    """Open and close the logger as a trainer does: with the resolved config it logs."""
    cfg = load_config(None, ["model.path=/m", "data.train=t.jsonl", f"train.output_dir={out}", *overrides])
    config = cfg.model_dump()
    with MetricsLogger(
        out, wandb=True, wandb_project=cfg.logging.wandb_project, config=config, progress=False
    ):
        pass
    return config


def test_logging_wandb_keys_reach_wandb_init(tmp_path, fake_wandb):
    config = _start(
        tmp_path,
        "logging.wandb_project=proj",
        "logging.wandb_entity=team",
        "logging.wandb_name=first try",
        "logging.wandb_group=seeds",
        "logging.wandb_tags=[grpo, tiny]",
        "logging.wandb_mode=offline",
    )
    assert fake_wandb == [
        {
            "project": "proj",
            "dir": str(tmp_path),
            "name": "first try",
            "config": config,
            "entity": "team",
            "group": "seeds",
            "tags": ["grpo", "tiny"],
            "mode": "offline",
        }
    ]


def test_unset_options_are_left_to_wandb_and_the_name_is_the_run_folder(tmp_path, fake_wandb):
    _start(tmp_path / "my_run")
    assert set(fake_wandb[0]) == {"project", "dir", "name", "config"}
    assert fake_wandb[0]["name"] == "my_run" and fake_wandb[0]["project"] == "vlrl"


def test_a_resumed_run_continues_the_wandb_run_of_its_output_dir(tmp_path, fake_wandb):
    _start(tmp_path)
    assert "id" not in fake_wandb[0]  # a new run: wandb picks the id ...
    assert (tmp_path / WANDB_RUN_ID_FILE).read_text() == "new1\n"  # ... and the run folder keeps it
    _start(tmp_path, "train.resume=auto")
    assert fake_wandb[1]["id"] == "new1" and fake_wandb[1]["resume"] == "allow"
    assert (tmp_path / WANDB_RUN_ID_FILE).read_text() == "new1\n"


def test_a_new_run_in_the_same_folder_starts_a_new_wandb_run(tmp_path, fake_wandb):
    _start(tmp_path)
    _start(tmp_path)  # train.resume unset: not a continuation
    assert "id" not in fake_wandb[1] and "resume" not in fake_wandb[1]
    assert (tmp_path / WANDB_RUN_ID_FILE).read_text() == "new2\n"


def test_resuming_without_a_saved_id_starts_a_new_wandb_run(tmp_path, fake_wandb):
    _start(tmp_path, "train.resume=auto")  # e.g. the first run had wandb off
    assert "id" not in fake_wandb[0]
    assert (tmp_path / WANDB_RUN_ID_FILE).read_text() == "new1\n"


def test_a_bad_wandb_mode_is_a_config_error_naming_the_key():
    with pytest.raises(
        ConfigError, match=r"logging.wandb_mode: Input should be 'online', 'offline' or 'disabled'"
    ):
        load_config(None, ["model.path=/m", "data.train=t.jsonl", "logging.wandb_mode=ofline"])


def test_vlrl_sft_resumed_with_auto_logs_to_the_same_wandb_run(tiny_models, tmp_path, fake_wandb):
    data = generate_dataset("count_shapes", 6, tmp_path / "data", seed=0, heldout=1)
    args = [
        *COMMON,
        f"model.path={tiny_models['qwen2_vl']}",
        f"data.train={data['train']}",
        f"train.output_dir={tmp_path / 'run'}",
        "train.steps=2",
        "train.save_every=1",
        "sft.batch_size=2",
        "logging.wandb=true",
    ]
    SFTTrainer(load_config(None, args, schema=SFTConfig)).train(until=1)  # stopped after step 1
    SFTTrainer(load_config(None, [*args, "train.resume=auto"], schema=SFTConfig)).train()
    assert "id" not in fake_wandb[0]
    assert fake_wandb[1]["id"] == "new1" and fake_wandb[1]["resume"] == "allow"
