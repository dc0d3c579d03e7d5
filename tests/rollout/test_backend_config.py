"""Each rollout backend reads its own config section: make_backend(name, model, adapter, cfg).

The trainer names no backend; these tests pin which config keys reach which constructor argument.
vLLM is not needed: its backend's options are read without starting an engine.
"""

from __future__ import annotations

import pytest

from vlrl.config import TrainConfig, load_config
from vlrl.rollout import HFRolloutBackend, make_backend
from vlrl.rollout.server import ServerRolloutBackend
from vlrl.rollout.vllm_engine import VLLMRolloutBackend

REQUIRED = ["model.path=/ckpt", "data.train=train.jsonl"]


def _cfg(*overrides: str) -> TrainConfig:
    return load_config(None, [*REQUIRED, *overrides], schema=TrainConfig)


def test_hf_takes_nothing_from_the_config(loaded):
    lm = loaded["qwen2_vl"]
    backend = make_backend("hf", lm.model, lm.adapter, _cfg("rollout.vllm.sleep=false"))
    assert isinstance(backend, HFRolloutBackend) and backend.max_batch_rows is None


def test_vllm_options_come_from_rollout_vllm_and_the_model_and_seed():
    cfg = _cfg(
        "rollout.backend=vllm",
        "rollout.vllm.gpu_memory_utilization=0.3",
        "rollout.vllm.max_model_len=2048",
        "rollout.vllm.sleep=false",
        "model.dtype=bfloat16",
        "train.seed=7",
    )
    assert VLLMRolloutBackend.config_options(cfg) == {
        "model_path": "/ckpt",
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.3,
        "max_model_len": 2048,
        "sleep": False,
        "seed": 7,
        "routes": False,  # model.routing_replay off: the engine records no expert routes
    }
    replay = _cfg("rollout.backend=vllm", "model.routing_replay=R3")
    assert VLLMRolloutBackend.config_options(replay)["routes"] is True


def test_server_options_come_from_rollout_server(loaded, tmp_path):
    lm = loaded["qwen2_vl"]
    cfg = _cfg(
        "rollout.backend=server",
        "rollout.server.url=http://gen-host:30000/v1",
        "rollout.server.kind=sglang",  # an SGLang client asks the server nothing when it starts
        f"rollout.server.sync_dir={tmp_path}",
        "rollout.server.timeout_s=7.5",
        "rollout.server.retries=5",
    )
    backend = make_backend(cfg.rollout.backend, lm.model, lm.adapter, cfg)
    assert isinstance(backend, ServerRolloutBackend)
    assert (backend.url, backend.kind, backend.sync_dir) == ("http://gen-host:30000", "sglang", tmp_path)
    assert (backend.timeout_s, backend.retries) == (7.5, 5)
    # Keyword options win over the config's.
    assert make_backend("server", lm.model, lm.adapter, cfg, retries=0).retries == 0


@pytest.mark.parametrize(
    ("old", "new"),
    [("vllm_sleep=false", "vllm.sleep"), ("server_url=http://h:8000", "server.url")],
)
def test_the_flat_keys_of_before_are_unknown(old, new):
    with pytest.raises(ValueError, match=f"rollout.{old.split('=')[0]}: unknown key") as info:
        _cfg(f"rollout.{old}")
    assert f"did you mean '{new}'?" in str(info.value)  # where it lives now
