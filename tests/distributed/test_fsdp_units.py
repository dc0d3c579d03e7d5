"""FSDP2 units: float32 routers in a bfloat16 MoE shard as units of their own."""

from __future__ import annotations

import torch
import torch.distributed as dist

from vlrl.distributed.fsdp import odd_dtype_modules, shard_model
from vlrl.models.loading import load_model


def test_float32_routers_in_a_bfloat16_model_shard_and_train(tiny_models, tmp_path):
    lm = load_model(tiny_models["qwen3_vl_moe"], dtype="bfloat16", router_dtype="float32")
    routers = [m for _, m in lm.adapter.routers(lm.model)]
    # FSDP2 refuses a unit mixing bfloat16 and float32 parameters: each router is its own unit.
    assert odd_dtype_modules(lm.model) == routers
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = shard_model(lm.model, param_dtype="bfloat16")
        ids = torch.tensor([[5, 6, 7, 8]])
        model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().sum().backward()
        grads = [p.grad for r in routers for p in r.parameters()]
        # Gathered in their stored float32 whatever param_dtype says, and they learn.
        assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)
    finally:
        dist.destroy_process_group()


def test_a_model_of_one_dtype_has_no_odd_modules(tiny_models):
    assert odd_dtype_modules(load_model(tiny_models["qwen2_vl"]).model) == []
