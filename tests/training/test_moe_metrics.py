"""MoE router policy and expert-load metrics on the tiny Qwen3-VL-MoE (4 experts, top-2, per layer):
float32 routers in a bfloat16 model, the moe/* metrics of a GRPO run and its report, a run made
to collapse raising the alarms, and the shipped MoE preset running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_rl import HAS_E_REWARD, has_e_args, rl_workspace

from vlrl.config import TrainConfig, load_config
from vlrl.models.loading import load_model
from vlrl.monitoring.experts import ExpertLoadMonitor
from vlrl.report import write_report
from vlrl.training.grpo import GRPOTrainer

SMALL = ["train.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_models):
    return rl_workspace(tmp_path_factory.mktemp("moe_metrics"), HAS_E_REWARD, tiny_models["qwen3_vl_moe"])


def router_calls(model, adapter) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input hidden states, output logits) of every router call of `model`'s next forwards."""
    calls = []
    for _, router in adapter.routers(model):
        router.register_forward_hook(lambda m, args, out: calls.append((args[0], out[0])))
    return calls


@pytest.mark.parametrize("router_dtype", ["float32", "model"])
def test_router_logits_of_a_bf16_model(tiny_models, router_dtype):
    loaded = load_model(tiny_models["qwen3_vl_moe"], dtype="bfloat16", router_dtype=router_dtype)
    model, adapter = loaded.model, loaded.adapter
    calls = router_calls(model, adapter)
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 9, 13, 2, 7]]), attention_mask=torch.ones(1, 5, dtype=torch.long))
    assert len(calls) == len(adapter.routers(model)) > 0
    weights = [r.weight for _, r in adapter.routers(model)]
    for (hidden, logits), w in zip(calls, weights, strict=True):
        if router_dtype == "float32":
            # the hidden states come in bf16 from the layer; the logits are their exact fp32 product
            assert w.dtype == logits.dtype == torch.float32
            assert torch.equal(logits, torch.nn.functional.linear(hidden.float(), w.float()))
        else:
            assert w.dtype == logits.dtype == torch.bfloat16
    others = {p.dtype for n, p in model.named_parameters() if ".mlp.gate." not in n}
    assert others == {torch.bfloat16}  # only the routers were cast up


def test_float32_router_under_autocast_is_not_cast_down(tiny_models):
    loaded = load_model(tiny_models["qwen3_vl_moe"], dtype="float32")
    calls = router_calls(loaded.model, loaded.adapter)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loaded.model(input_ids=torch.tensor([[5, 9, 13]]), attention_mask=torch.ones(1, 3, dtype=torch.long))
    assert all(logits.dtype == torch.float32 for _, logits in calls)


def test_dense_models_get_no_monitor(tiny_models):
    loaded = load_model(tiny_models["qwen2_vl"])
    assert ExpertLoadMonitor.for_model(loaded.model, loaded.adapter, 20) is None


def test_grpo_logs_the_moe_metrics_and_the_report_plots_them(workspace, tmp_path):
    args = has_e_args(workspace["model"], workspace["data"]["train"], workspace["reward"], tmp_path)
    history = GRPOTrainer(load_config(None, [*args, *SMALL], schema=TrainConfig)).train()
    config = json.loads((Path(workspace["model"]) / "config.json").read_text())
    layers = [k for k in history[0] if k.startswith("moe/layer_")]
    assert len(layers) == config["text_config"]["num_hidden_layers"]  # every layer is MoE
    for h in history:
        # 4 experts, top-2: max / mean is in [1, E/k = 2]; entropy in (0, ln 4]
        assert 1.0 <= h["moe/load_max_over_mean"] <= 2.0
        assert h["moe/load_cv"] >= 0.0
        assert 0.0 < h["moe/router_entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
        assert h["moe/dead_experts"] == 0.0  # 20 steps must pass first
    html = write_report(tmp_path).read_text()
    assert "Mixture of experts" in html and "moe/load_cv" in html


def collapsed_copy(model_dir: Path, out: Path) -> Path:
    """The tiny model with every router weight 0: all experts tie and top-k sends every token to
    the same 2 of the 4 experts (the tie-break), load max / mean = E/k = 2, two experts idle."""
    loaded = load_model(model_dir)
    for _, router in loaded.adapter.routers(loaded.model):
        torch.nn.init.zeros_(router.weight)
    loaded.model.save_pretrained(out)
    loaded.processor.save_pretrained(out)
    return out


def test_a_collapsed_router_raises_expert_collapse_and_dead_experts(workspace, tmp_path):
    model = collapsed_copy(workspace["model"], tmp_path / "collapsed")
    args = has_e_args(model, workspace["data"]["train"], workspace["reward"], tmp_path / "run")
    overrides = [
        *SMALL,
        "train.steps=3",
        "model.freeze=[router]",  # stays collapsed
        "monitor.min_steps=2",
        "monitor.expert_load_max=1.5",
        "monitor.dead_expert_steps=2",
    ]
    history = GRPOTrainer(load_config(None, [*args, *overrides], schema=TrainConfig)).train()
    assert [h["moe/load_max_over_mean"] for h in history] == [2.0, 2.0, 2.0]
    # 2 idle experts in each layer, dead from the second step without a token
    L = json.loads((model / "config.json").read_text())["text_config"]["num_hidden_layers"]
    assert [h["moe/dead_experts"] for h in history] == [0.0, 2.0 * L, 2.0 * L]
    lines = (tmp_path / "run" / "alarms.jsonl").read_text().splitlines()
    fired = {(a["name"], a["step"]) for a in map(json.loads, lines)}
    assert {("expert_collapse", 2), ("dead_experts", 2)} <= fired


def test_the_moe_preset_runs(workspace, tmp_path):
    preset = Path(__file__).parents[2] / "configs" / "grpo_moe_preset_tiny.yaml"
    overrides = [
        f"model.path={workspace['model']}",
        f"data.train={workspace['data']['train']}",
        f"train.output_dir={tmp_path}",
        "logging.progress=false",
        *SMALL,
    ]
    cfg = load_config(preset, overrides, schema=TrainConfig)
    assert (cfg.algo.policy_loss, cfg.model.freeze, cfg.model.router_dtype) == ("gspo", ["router"], "float32")
    history = GRPOTrainer(cfg).train()
    assert len(history) == 2 and all("moe/load_cv" in h for h in history)
