"""bench/moe_replay.py end to end at the smallest size for 2 steps: every arm trains, the printed
structure is there; R3 and off differ in routing replay only; the router noise is undone exactly."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from moe_replay import arm_config, main, mean_over_seeds, perturbed_routers  # bench/: conftest.py

from vlrl.models.tiny.factory import FAMILIES

needs_moe = pytest.mark.skipif("qwen3_vl_moe" not in FAMILIES, reason="the factory has no qwen3_vl_moe")


@needs_moe
def test_every_arm_trains_and_the_curves_and_ratios_are_printed(capsys, tmp_path):
    result = main(["--steps", "2", "--prompts", "2", "--group", "2", "--max-new-tokens", "4",
                   "--router-noise", "0.05", "--plain", "--threads", "1", "--out", str(tmp_path)])  # fmt: skip
    arms = result["arms"]
    assert list(arms) == ["R3", "off", "plain"]
    for arm, s in arms.items():
        assert len(s["reward"]) == 2 and len(s["reward_windows"]) == 1, arm
        assert all(0.0 <= r <= 1.0 for r in (*s["reward"], s["heldout_before"], s["heldout_after"])), arm
        assert len(s["route_mismatch"]) == 2 and all(v is not None for v in s["route_mismatch"]), arm
        assert {"moe/load_max_over_mean", "moe/load_cv", "moe/router_entropy"} <= set(s["expert_load"]), arm
    # R3 trains on the rollout's routes: no (token, layer) route differs, by construction.
    assert arms["R3"]["route_mismatch"] == [0.0, 0.0]
    # Same model, seeds and evaluation prompts: every arm starts from the same held-out reward.
    assert arms["R3"]["heldout_before"] == arms["off"]["heldout_before"] == arms["plain"]["heldout_before"]
    assert set(result["ratios"]) == {"last window reward R3/off", "held-out after R3/off"}
    assert result["ratios_per_seed"] == [result["ratios"]]  # one seed: its ratios are the ratios
    out = capsys.readouterr().out
    for arm in arms:
        assert f"\n[{arm}]\n" in out
    for label in ("reward per step", "reward per 10-step window", "held-out reward", "moe/route_mismatch",
                  "expert load, last step", "alarms", "last window reward R3/off"):  # fmt: skip
        assert label in out, label
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    assert sorted(p.relative_to(tmp_path / "runs").as_posix() for p in (tmp_path / "runs").glob("*/*")) == [
        "R3/seed_0",
        "off/seed_0",
        "plain/seed_0",
    ]


def test_r3_and_off_differ_in_routing_replay_only_and_plain_drops_the_preset(tmp_path):
    args = argparse.Namespace(group=2, prompts=2, max_new_tokens=4, reward="has_e", steps=2, lr=None)
    cfg = {
        arm: arm_config(args, arm, tmp_path / "m", tmp_path / "d.jsonl", tmp_path / "r.py", tmp_path / "out")
        for arm in ("R3", "off", "plain")
    }
    r3, off = (cfg[a].model_dump(mode="json") for a in ("R3", "off"))
    assert r3["model"].pop("routing_replay") == "R3" and off["model"].pop("routing_replay") == "off"
    assert r3 == off
    assert cfg["R3"].algo.policy_loss == "gspo" and cfg["R3"].model.freeze == ["router"]
    plain = cfg["plain"]
    assert plain.model.routing_replay == "off" and plain.algo.policy_loss != "gspo" and not plain.model.freeze
    assert plain.train.lr == cfg["R3"].train.lr  # the preset's, unless --lr says otherwise


def test_seeds_are_averaged_element_wise_and_kept():
    a = {"reward": [1.0, 2.0], "route_mismatch": [None, 0.5], "heldout_after": 1.0,
         "expert_load": {"moe/load_cv": 0.2}, "alarms": ["step 7 expert_collapse"]}  # fmt: skip
    b = {"reward": [3.0, 4.0], "route_mismatch": [None, 0.0], "heldout_after": 2.0,
         "expert_load": {"moe/load_cv": 0.4}, "alarms": []}  # fmt: skip
    m = mean_over_seeds([a, b])
    assert m["reward"] == [2.0, 3.0] and m["route_mismatch"] == [None, 0.25] and m["heldout_after"] == 1.5
    assert m["expert_load"] == {"moe/load_cv": pytest.approx(0.3)}
    assert m["alarms"] == ["seed 0: step 7 expert_collapse"] and m["per_seed"] == [a, b]


def test_router_noise_is_applied_inside_and_undone_bit_for_bit():
    weights = [torch.randn(4, 8), torch.randn(4, 16)]
    saved = [w.clone() for w in weights]
    with perturbed_routers(weights, 0.05, torch.Generator().manual_seed(0)):
        assert all(not torch.equal(w, s) for w, s in zip(weights, saved, strict=True))
    assert all(torch.equal(w, s) for w, s in zip(weights, saved, strict=True))
    with perturbed_routers(weights, 0.0, torch.Generator()):  # 0: untouched
        assert all(torch.equal(w, s) for w, s in zip(weights, saved, strict=True))


@pytest.mark.parametrize(
    "argv", [["--steps", "0"], ["--seeds", "0"], ["--router-noise", "-1"], ["--size", "huge"]]
)
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
