"""model.experts_implementation and model.router_aux_loss_coef at load time, on the tiny MoE families.

InternVL around a Qwen3-MoE language model is the case `set_experts_kernel` exists for: its outer
class has no experts and refuses `from_pretrained(experts_implementation="grouped_mm")`.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

from vlrl.config import TrainConfig, load_config
from vlrl.models.loading import load_model
from vlrl.models.tiny.factory import FAMILIES
from vlrl.training.setup import load_policy, load_reference

KERNELS = ("grouped_mm", "batched_mm", "eager")
# The MoE families whose config has the router fields (transformers computes their load-balancing loss).
ROUTER_LOSS_FAMILIES = ("qwen3_vl_moe", "internvl_moe", "qwen3_5_moe", "glm4v_moe")
MOE_FAMILIES = (*ROUTER_LOSS_FAMILIES, "aria")


@pytest.fixture(params=MOE_FAMILIES)
def moe_model(request, tiny_models):
    if request.param not in FAMILIES:
        pytest.skip(f"the tiny-model factory has no {request.param} family")
    return tiny_models[request.param]


@pytest.fixture(params=ROUTER_LOSS_FAMILIES)
def router_loss_model(request, tiny_models):
    if request.param not in FAMILIES:
        pytest.skip(f"the tiny-model factory has no {request.param} family")
    return tiny_models[request.param]


def experts_modules(model) -> list[torch.nn.Module]:
    """The fused expert modules (transformers' `@use_experts_implementation` classes)."""
    return [m for m in model.modules() if hasattr(m, "gate_up_proj") and hasattr(m, "is_transposed")]


def text_configs(model):
    """Every config object of `model` that carries the router fields."""
    configs = [model.config] + [getattr(model.config, k) for k in model.config.sub_configs]
    return [c for c in configs if hasattr(c, "output_router_logits")]


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def kernel_calls(monkeypatch) -> dict[str, int]:
    """Counts calls of each registered experts kernel (eager is the module's own forward)."""
    calls = dict.fromkeys(ALL_EXPERTS_FUNCTIONS, 0)
    for name in calls:
        original = ALL_EXPERTS_FUNCTIONS[name]

        def spy(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        # The instance's local mapping overrides the class-wide one; undone after the test.
        monkeypatch.setitem(ALL_EXPERTS_FUNCTIONS._local_mapping, name, spy)
    return calls


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_requested_kernel_runs_every_experts_layer(moe_model, kernel, kernel_calls):
    model = load_model(moe_model, experts_implementation=kernel).model
    experts = experts_modules(model)
    assert experts, "the tiny MoE has no fused experts module"
    assert {e.config._experts_implementation for e in experts} == {kernel}
    logits(model, torch.tensor([[5, 6, 7, 8]]))
    # One call per MoE layer for the chosen kernel, none for the others (eager is no registered kernel).
    expected = dict.fromkeys(kernel_calls, 0) | ({kernel: len(experts)} if kernel != "eager" else {})
    assert kernel_calls == expected


def test_grouped_mm_and_eager_give_the_same_logits(moe_model):
    ids = torch.randint(10, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    grouped = logits(load_model(moe_model, experts_implementation="grouped_mm").model, ids)
    eager = logits(load_model(moe_model, experts_implementation="eager").model, ids)
    assert grouped.shape == (2, 12, grouped.shape[-1])
    torch.testing.assert_close(grouped, eager, rtol=1e-5, atol=1e-5)


def test_router_logits_are_never_recorded_through_the_config_only_when_a_pass_asks(router_loss_model):
    off = load_model(router_loss_model).model
    on = load_model(router_loss_model, router_aux_loss_coef=0.01).model
    assert [c.output_router_logits for c in text_configs(off)] == [False]
    # The coefficient is written, but logits stay off: generation would record them for nothing.
    assert [(c.output_router_logits, c.router_aux_loss_coef) for c in text_configs(on)] == [(False, 0.01)]
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert getattr(on(input_ids=ids), "router_logits", None) is None
        recorded = on.model.language_model(input_ids=ids, output_router_logits=True).router_logits
    # One [tokens, experts] tensor per MoE layer (gate_up_proj is [experts, 2 * intermediate, hidden]).
    experts = experts_modules(on)
    assert len(recorded) == len(experts) and recorded[0].shape == (4, experts[0].gate_up_proj.shape[0])


def test_the_policy_and_its_reference_use_the_model_sections_kernel(router_loss_model, tmp_path):
    """load_policy passes both settings; the KL reference runs the same kernel (so that the two
    kernels' runs differ in nothing else) with no load-balancing coefficient (it computes no loss)."""
    train = tmp_path / "train.jsonl"
    train.write_text('{"question": "q", "answer": "1"}\n')
    cfg = load_config(
        None,
        [f"model.path={router_loss_model}", f"data.train={train}", "model.experts_implementation=eager",
         "model.router_aux_loss_coef=0.02", "algo.kl_beta=0.04"],
        schema=TrainConfig,
    )  # fmt: skip
    model = load_policy(cfg.model, cfg.data, torch.device("cpu")).model
    assert {e.config._experts_implementation for e in experts_modules(model)} == {"eager"}
    assert [(c.output_router_logits, c.router_aux_loss_coef) for c in text_configs(model)] == [(False, 0.02)]
    reference = load_reference(cfg, torch.device("cpu"), SimpleNamespace(distributed=False))
    assert {e.config._experts_implementation for e in experts_modules(reference)} == {"eager"}
    assert [c.router_aux_loss_coef for c in text_configs(reference)] == [0.0]


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_dense_model_ignores_the_kernel(tiny_models, kernel):
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    default = logits(load_model(tiny_models["qwen2_vl"]).model, ids)
    model = load_model(tiny_models["qwen2_vl"], experts_implementation=kernel).model
    assert not experts_modules(model)
    torch.testing.assert_close(logits(model, ids), default, rtol=0, atol=0)


def test_a_dense_model_refuses_a_load_balancing_coefficient_naming_the_setting(tiny_models):
    with pytest.raises(ValueError, match=r"model.router_aux_loss_coef=0.01: qwen2_vl has no router"):
        load_model(tiny_models["qwen2_vl"], router_aux_loss_coef=0.01)


def test_an_moe_without_a_load_balancing_loss_refuses_a_coefficient(tiny_models):
    """transformers' Aria has no output_router_logits / router_aux_loss_coef: no loss to weight."""
    if "aria" not in FAMILIES:
        pytest.skip("the tiny-model factory has no aria family")
    with pytest.raises(ValueError, match=r"model.router_aux_loss_coef=0.5: aria has no router"):
        load_model(tiny_models["aria"], router_aux_loss_coef=0.5)
