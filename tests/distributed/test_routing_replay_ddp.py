"""Routing replay R3 under torchrun + FSDP2 on CPU (gloo): a 2-process run of the tiny
Qwen3-VL-MoE is the 1-process run, step by step.

Each rank samples its prompts with the hf backend, which records their routes; each rank replays
its own rows' routes in every policy pass of the step (the old-policy pass, both PPO epochs'
updates) and the route mismatch, summed over ranks, is 0 in both runs. Tolerances and launch as in
test_data_parallel.py (same completions, the same float32 terms summed in another order).
"""

from __future__ import annotations

import pytest
from test_data_parallel import RL_CLOSE, assert_same_steps, metrics, rl_args, run

from vlrl.synth import generate_dataset

REWARD_FILE = (
    'def has_e(completions, **fields):\n    return [1.0 if "e" in c else 0.0 for c in completions]\n'
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("r3_dp")
    data = generate_dataset("counting", 40, root / "data", seed=0, heldout=8)
    (root / "rewards.py").write_text(REWARD_FILE)
    return {"root": root, "model": tiny_models["qwen3_vl_moe"], "data": data, "reward": root / "rewards.py"}


def test_r3_two_processes_match_one(ws):
    extra = (
        "model.routing_replay=R3",
        "model.gradient_checkpointing=false",
        "algo.ppo_epochs=2",
        "train.steps=3",
        "train.eval_every=0",
        "train.save_every=0",
    )
    one, two = ws["root"] / "one", ws["root"] / "two"
    run(rl_args(ws, one, *extra))
    run(rl_args(ws, two, *extra), nproc=2)
    a, b = metrics(one), metrics(two)
    assert len(a) == 3
    assert_same_steps(a, b, ("reward/total/mean", "response_length/mean"), RL_CLOSE)
    assert [r["moe/route_mismatch"] for r in a] == [r["moe/route_mismatch"] for r in b] == [0.0] * 3
    assert any(r["loss"] != 0 for r in a)
