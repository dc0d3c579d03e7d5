"""bench/moe_step.py end to end at a toy size: three sides train, the kernels' losses agree, ratios print;
the dense twin matches the MoE's active size."""

from __future__ import annotations

import json
import math

import pytest
from moe_step import SIDES, check_losses, check_same_active_size, dense_twin, main  # bench/: conftest.py
from transformers import AutoConfig

from vlrl.models.loading import load_model
from vlrl.models.tiny.factory import FAMILIES, build_tiny_model


@pytest.mark.skipif("qwen3_vl_moe" not in FAMILIES, reason="the factory has no qwen3_vl_moe")
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
    # The dense twin has the MoE's active parameters, routers aside (one [experts, hidden] matrix a layer).
    params = result["parameters"]
    text = AutoConfig.from_pretrained(tmp_path / "models" / "qwen3_vl_moe").text_config
    routers = text.num_hidden_layers * text.num_experts * text.hidden_size
    assert params["dense"]["total"] == params["dense"]["active"] < params["moe eager"]["total"]
    assert params["moe eager"]["active"] - params["dense"]["active"] == routers
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


def test_the_dense_twin_is_the_moe_with_one_mlp_of_top_k_experts_width(tmp_path):
    if "qwen3_vl_moe" not in FAMILIES:
        pytest.skip("the factory has no qwen3_vl_moe")
    moe = build_tiny_model("qwen3_vl_moe", tmp_path / "moe", size="micro")
    dense = dense_twin(moe, tmp_path / "dense")
    m, d = AutoConfig.from_pretrained(moe), AutoConfig.from_pretrained(dense)
    assert d.model_type == "qwen3_vl" and not hasattr(d.text_config, "num_experts")
    assert (
        d.text_config.intermediate_size
        == m.text_config.num_experts_per_tok * m.text_config.moe_intermediate_size
    )
    assert d.text_config.num_hidden_layers == m.text_config.num_hidden_layers
    check_same_active_size(moe, dense)  # passes
    with pytest.raises(SystemExit, match="the dense twin does not match qwen3_vl_moe"):
        check_same_active_size(moe, moe)  # the MoE's intermediate_size is no top_k x experts' width
    # The twin loads as any checkpoint does, with the MoE's tokenizer and processor.
    assert (
        load_model(dense).processor.tokenizer.get_vocab() == load_model(moe).processor.tokenizer.get_vocab()
    )
