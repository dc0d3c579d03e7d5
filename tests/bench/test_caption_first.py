"""bench/caption_first.py: the two arms differ in the prompt template (and its one-line request),
the format reward and the SFT layout only; their SFT targets hold the same text in each template's
format; end to end at the smallest size, both arms train per seed and the table and differences
are printed."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from caption_first import (  # bench/: conftest.py
    ARMS,
    arm_files,
    grpo_config,
    main,
    parse_args,
    sft_config,
    sft_target,
)

from vlrl.config import TrainConfig, load_config
from vlrl.io import read_jsonl
from vlrl.models.tiny.factory import FAMILIES
from vlrl.rewards.tags import caption_format_reward, format_reward
from vlrl.synth import generate_dataset

FAMILY = "deepseek_vl2"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "grpo_deepseek_vl2_caption_tiny.yaml"
needs_family = pytest.mark.skipif(FAMILY not in FAMILIES, reason=f"the factory has no {FAMILY}")

ROW = {  # a count_shapes row as vlrl.synth writes it, and an invented one with reasoning steps
    "caption": "There are 2 shapes: a red square and a blue circle.",
    "solution": "<think>There are 2 shapes: a red square and a blue circle.</think><answer>2</answer>",
}
STEPS = {
    "caption": "There is a red square.",
    "solution": "<think>There is a red square. Counting the squares: 1.</think><answer>1</answer>",
}


def test_the_targets_hold_the_same_text_in_each_layout():
    assert sft_target(ROW, "caption_think_answer") == (
        "<caption>There are 2 shapes: a red square and a blue circle.</caption><think></think><answer>2</answer>"
    )
    assert sft_target(STEPS, "caption_think_answer") == (
        "<caption>There is a red square.</caption><think>Counting the squares: 1.</think><answer>1</answer>"
    )
    assert sft_target(STEPS, "think_answer") == STEPS["solution"]
    with pytest.raises(ValueError, match="row r7: solution is not"):
        sft_target({"id": "r7", "caption": "Two shapes.", "solution": "<answer>2</answer>"}, "think_answer")


def test_each_arms_data_file_teaches_the_layout_its_format_reward_accepts(tmp_path):
    files = generate_dataset("counting", 12, tmp_path, seed=0, heldout=4)
    words = {}
    for arm, (template, reward) in ARMS.items():
        data = arm_files(files, template)
        rows = read_jsonl(data["train"])
        assert len(rows) == 8 and len(read_jsonl(data["heldout"])) == 4
        check = caption_format_reward if reward == "caption_format" else format_reward
        assert check([r["sft_target"] for r in rows]) == [1.0] * 8, arm
        assert data["train"].parent == files["train"].parent  # relative image paths still resolve
        words[arm] = [re.sub(r"</?\w+>", " ", r["sft_target"]).split() for r in rows]
    assert words["caption-first"] == words["think-only"]


def test_the_arms_differ_in_template_format_reward_and_files_only(tmp_path):
    args = argparse.Namespace(
        max_prompt_length=512, freeze="[router]", routing_replay="off", sft_batch=4, sft_steps=3,
        group=4, prompts=2, max_new_tokens=16, steps=2, eval_every=0, eval_samples=2, eval_batch=8,
    )  # fmt: skip
    configs = {}
    for arm, (template, _) in ARMS.items():
        data = {
            "train": tmp_path / f"train.{template}.jsonl",
            "heldout": tmp_path / f"heldout.{template}.jsonl",
        }
        grpo = grpo_config(args, arm, tmp_path / "m", data, tmp_path / arm, seed=3).model_dump(mode="json")
        sft = sft_config(args, arm, tmp_path / "m", data, tmp_path / arm, seed=3).model_dump(mode="json")
        configs[arm] = (grpo, sft)
    (cap, cap_sft), (think, think_sft) = configs["caption-first"], configs["think-only"]
    assert cap["reward"].pop("functions") == ["caption_format", "accuracy"]
    assert think["reward"].pop("functions") == ["format", "accuracy"]
    for a, b in ((cap, think), (cap_sft, think_sft)):
        assert (a["data"].pop("template"), b["data"].pop("template")) == (
            "caption_think_answer",
            "think_answer",
        )
        caption_prompt, think_prompt = a["data"].pop("system_prompt"), b["data"].pop("system_prompt")
        assert "<caption> </caption>" in caption_prompt and "<caption>" not in think_prompt
        for c in (a, b):
            for section, key in (("data", "train"), ("data", "eval"), ("train", "output_dir")):
                del c[section][key]
        assert a == b
    assert cap["train"]["seed"] == cap_sft["train"]["seed"] == 3 and cap["train"]["eval_every"] == 2
    assert cap_sft["sft"]["target_field"] == "sft_target" and cap["model"]["freeze"] == ["router"]


def test_the_tiny_caption_config_is_the_measured_caption_first_arm():
    """configs/grpo_deepseek_vl2_caption_tiny.yaml continues from the cold start that the README's
    measurement (`--seeds 1 --out runs/caption_first`) leaves, with that run's GRPO settings."""
    shipped = load_config(CONFIG, schema=TrainConfig).model_dump(mode="json")
    args = parse_args(["--out", "runs/caption_first"])
    root = Path("runs/caption_first/seed_0")
    data = {
        "train": root / "data/train.caption_think_answer.jsonl",
        "heldout": root / "data/heldout.caption_think_answer.jsonl",
    }
    cold_start = root / "caption-first/sft/checkpoints" / f"step_{args.sft_steps:06d}"
    measured = grpo_config(args, "caption-first", cold_start, data, root / "x", seed=0).model_dump(
        mode="json"
    )
    for cfg in (shipped, measured):
        for section, key in (("train", "output_dir"), ("train", "save_every"),
                             ("logging", "progress"), ("logging", "rollouts_every")):  # fmt: skip
            del cfg[section][key]
    assert shipped == measured


@needs_family
def test_both_arms_train_per_seed_and_the_table_is_printed(capsys, tmp_path):
    result = main(["--size", "micro", "--n-train", "16", "--n-heldout", "4", "--seeds", "2", "--sft-steps", "2",
                   "--sft-batch", "2", "--steps", "2", "--prompts", "2", "--group", "2", "--max-new-tokens", "8",
                   "--eval-samples", "2", "--window", "1", "--threads", "1", "--out", str(tmp_path)])  # fmt: skip
    runs = result["runs"]
    assert list(runs) == ["caption-first", "think-only"] and all(len(r) == 2 for r in runs.values())
    for arm, rows in runs.items():
        for row in rows:
            scores = [
                row[f"{k} {when}"]
                for k in ("acc", "pass@1", "format", "sampled_format")
                for when in ("before", "after")
            ]
            assert all(0.0 <= s <= 1.0 for s in scores), arm
            assert len(row["per_step_reward"]) == 2 and row["minutes"] > 0
            assert [e["step"] for e in row["evals"]] == [0, 2]  # before GRPO, then every --eval-every
            assert row["evals"][-1]["acc"] == row["acc after"] and row["evals"][0]["acc"] == row["acc before"]
        assert [row["seed"] for row in rows] == [0, 1]
        mean = result["means"][arm]["acc after"]
        assert mean == pytest.approx((rows[0]["acc after"] + rows[1]["acc after"]) / 2)
    diff = result["differences"]["pass@1 after"]
    assert diff == pytest.approx(
        result["means"]["caption-first"]["pass@1 after"] - result["means"]["think-only"]["pass@1 after"]
    )
    for seed in (0, 1):
        for arm in ARMS:
            assert (tmp_path / f"seed_{seed}" / arm / "grpo" / "metrics.jsonl").is_file()
        logged = read_jsonl(tmp_path / f"seed_{seed}" / "caption-first" / "grpo" / "metrics.jsonl")
        assert "reward/caption_format/mean" in logged[0] and "reward/format/mean" not in logged[0]
    out = capsys.readouterr().out
    for label in ("seed 0 caption-first", "seed 1 think-only", "mean caption-first", "mean think-only",
                  "caption-first minus think-only"):  # fmt: skip
        assert label in out, label
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))


@pytest.mark.parametrize(
    "argv",
    [
        ["--steps", "0"],
        ["--seeds", "0"],
        ["--first-seed", "-1"],
        ["--group", "1"],
        ["--family", "nope"],
        ["--task", "nope"],
    ],
)
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
