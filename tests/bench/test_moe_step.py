"""bench/moe_step.py end to end at a toy size: three sides train, the kernels' losses agree, ratios print."""

from __future__ import annotations

import json
import math

import pytest
from moe_step import SIDES, check_losses, main  # bench/ is put on sys.path by conftest.py

from vlrl.models.tiny.factory import FAMILIES


@pytest.mark.skipif(
    not {"qwen3_vl_moe", "qwen3_vl"} <= set(FAMILIES), reason="the factory has no qwen3_vl / qwen3_vl_moe"
)
def test_both_kernels_and_the_dense_twin_train_and_the_ratios_are_printed(capsys, tmp_path):
    result = main(["--prompts", "2", "--group", "2", "--max-new-tokens", "4", "--steps", "3", "--runs", "1",
                   "--out", str(tmp_path)])  # fmt: skip
    assert set(result["ratios"]) == {
        "grouped_mm/eager s/step",
        "grouped_mm/eager update s",
        "moe/dense s/step",
        "moe/dense update s",
    }
    assert all(math.isfinite(r) and r > 0 for r in result["ratios"].values())
    # Same seeds: the kernels' per-step losses agree; the dense twin is another model.
    grouped, eager = result["losses"]["moe grouped_mm"], result["losses"]["moe eager"]
    assert len(grouped) == 3 and grouped == pytest.approx(eager, rel=1e-4, abs=1e-6)
    assert any(x != 0 for x in grouped), "all-zero losses would make the comparison empty"
    # The dense twin has the MoE's active parameters (routers aside: 2 x 4 experts x hidden 64 per layer).
    params = result["parameters"]
    assert params["dense"]["total"] == params["dense"]["active"] < params["moe eager"]["total"]
    assert params["moe eager"]["active"] - params["dense"]["active"] == 2 * 4 * 64
    out = capsys.readouterr().out
    for side in SIDES:
        assert f"run 1/1 {side}: " in out
    assert "grouped_mm/eager s/step" in out and "grouped_mm and eager agree" in out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    # Each side really trained in its own run folder.
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "dense_0",
        "moe_eager_0",
        "moe_grouped_mm_0",
    ]


def test_disagreeing_losses_stop_the_run_naming_the_step():
    check_losses({"moe grouped_mm": [0.5, 0.25], "moe eager": [0.5, 0.25000001]})
    with pytest.raises(SystemExit, match=r"losses differ at step\(s\) \[2\]"):
        check_losses({"moe grouped_mm": [0.5, 0.25], "moe eager": [0.5, 0.26]})


@pytest.mark.parametrize("argv", [["--steps", "1"], ["--runs", "0"], ["--size", "huge"]])
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
