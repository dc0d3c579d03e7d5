"""`vlrl demo` wiring on a few steps: which evaluations the "after" column averages, the table, the run folders.

Whether RL really lifts accuracy by 10 points takes the full run (under 10 minutes) on 1000
held-out items; that is measured by running `vlrl demo` itself (see the README), not here. The
SFT here runs fewer steps than the demo's warm-up, which must not be a config error, and its probe
target is never reached, so it runs to its last step; `tests/training/test_sft.py` tests the stop.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from vlrl.demo import EVAL_KEYS, DemoSettings, _table, run_demo


def small_demo(out, **changes) -> DemoSettings:
    """The demo on 64 training items, 8 probe and 8 held-out items, 3 SFT steps and 4 GRPO steps."""
    small = DemoSettings(
        out=out,
        n_train=64,
        n_probe=8,
        n_heldout=8,
        sft_steps=3,
        probe_every=1,
        rl_steps=4,
        eval_every=1,
        progress=False,
    )
    return replace(small, **changes)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # An earlier demo's checkpoint in the folder: a second `vlrl demo` starts over, not refused.
    stale = out / "grpo" / "checkpoints" / "step_000001"
    stale.mkdir(parents=True)
    (stale / "trainer_state.pt").write_bytes(b"")
    return out, run_demo(small_demo(out))


def test_after_is_the_mean_of_the_last_three_evaluations(demo_run):
    _, result = demo_run
    steps = [e["step"] for e in result["evals"]]
    assert steps == [1, 2, 3, 4]
    for key in EVAL_KEYS:
        last = [e[f"eval/heldout/{key}"] for e in result["evals"][-3:]]
        assert result["after"][key] == pytest.approx(sum(last) / 3)


def test_rl_starts_from_the_sft_checkpoint_and_both_runs_are_kept(demo_run):
    out, result = demo_run
    grpo_config = (out / "grpo" / "config.yaml").read_text()
    assert str(out / "sft" / "checkpoints" / "step_000003") in grpo_config
    assert (out / "grpo" / "checkpoints").is_dir()
    assert result["report"] is None or result["report"].exists()


def test_sft_is_probed_on_its_own_split(demo_run):
    out, _ = demo_run
    rows = {
        name: [json.loads(r) for r in (out / "data" / f"{name}.jsonl").read_text().splitlines()]
        for name in ("train", "probe", "heldout")
    }
    assert [len(rows[n]) for n in ("train", "probe", "heldout")] == [64, 8, 8]
    ids = [{r["id"] for r in rows[n]} for n in rows]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert {r["task"] for n in rows for r in rows[n]} == {"count_shapes"}
    sft_metrics = [json.loads(r) for r in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in sft_metrics if "eval/probe/acc" in m] == [1, 2, 3]


def test_table_shows_before_after_and_change(demo_run):
    _, result = demo_run
    table = _table(result["before"], result["after"], 3, 8)
    assert "held-out: 8 items, each answered 4 times at temperature 1" in table
    assert "after = mean of the last 3 evaluations" in table
    lines = table.splitlines()
    acc_row = lines.index(next(line for line in lines if line.startswith("held-out accuracy")))
    for line, key in zip(lines[acc_row : acc_row + 2], ("pass@1", "acc"), strict=True):
        change = (result["after"][key] - result["before"][key]) * 100
        assert line.endswith(f"{change:+.1f} pt")


def test_the_time_budget_stops_grpo_early_and_still_evaluates_its_last_step(tmp_path):
    # A budget spent before GRPO starts: it stops after its first step, between evaluations.
    result = run_demo(small_demo(tmp_path, eval_every=2, minutes=0.01))
    assert result["rl_steps"] == 1
    assert [e["step"] for e in result["evals"]] == [1]
    assert result["after"]["acc"] == result["evals"][0]["eval/heldout/acc"]
