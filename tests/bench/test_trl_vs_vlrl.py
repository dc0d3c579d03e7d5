"""bench/trl_vs_vlrl.py end to end at a toy size: both sides train, and the ratios are theirs."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("trl")

from trl_vs_vlrl import main  # noqa: E402  (bench/ is put on sys.path by conftest.py)


def test_both_sides_train_and_the_ratios_are_printed(capsys, tmp_path):
    result = main(
        ["--runs", "1", "--steps", "3", "--prompts", "2", "--group", "2", "--max-new-tokens", "8", "--sft-steps", "6",
         "--out", str(tmp_path)]
    )  # fmt: skip
    ratios = result["ratios"]
    assert set(ratios) == {"rollout samples/s", "training tokens/s", "s/step"}
    assert all(math.isfinite(r) and r > 0 for r in ratios.values())
    out = capsys.readouterr().out
    assert "TRL GRPOTrainer" in out and "trl 1." in out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))
    # Both sides really trained, from the cold-start checkpoint: each wrote its run.
    assert "both sides start from it" in out
    assert (tmp_path / "vlrl_0" / "metrics.jsonl").is_file()
    assert (tmp_path / "trl_0").is_dir()
