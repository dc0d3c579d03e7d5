"""A real tiny run wires dynamics, alarms, rollout dumps and the report together.

The model is first taught the answer format a little by SFT, then RL pays for format only: the
format reward rises while nothing measures accuracy, which is exactly the reward hacking the
`format_without_accuracy` alarm exists for.
"""

from __future__ import annotations

import json
import re

from helpers_rl import COMMON, rewrite_targets, short_sft

from vlrl.config import TrainConfig, load_config
from vlrl.io import ALARMS_FILE, ROLLOUTS_FILE
from vlrl.report import write_report
from vlrl.synth import generate_dataset
from vlrl.training.grpo import GRPOTrainer


def test_format_only_reward_raises_the_alarm_and_the_run_reports(tiny_models, tmp_path, chromium):
    data = generate_dataset("counting", 48, tmp_path / "data", seed=0, heldout=8)
    # A short target, so that a few SFT steps teach the format only partly.
    rewrite_targets(data["train"], lambda row: f"<think>I count.</think><answer>{row['answer']}</answer>")
    common = [*COMMON, f"data.train={data['train']}"]
    # 36 steps: the format only partly learnt, so RL has room to raise it.
    checkpoint = short_sft(
        tiny_models["qwen2_vl"],
        data["train"],
        tmp_path / "sft",
        36,
        "train.lr=1e-2",
        "train.lr_schedule=constant",
    )
    rl_cfg = load_config(
        None,
        [
            *common,
            f"model.path={checkpoint}",
            f"data.eval={{heldout: {data['heldout']}}}",
            "reward.functions=[format]",
            "rollout.group_size=4",
            "rollout.prompts_per_step=4",
            "rollout.max_new_tokens=48",
            "train.steps=24",
            "train.lr=1e-3",
            "train.lr_schedule=constant",
            "train.eval_every=12",
            "monitor.window=12",
            "monitor.format_rise=0.2",
            "monitor.min_steps=6",
            "logging.rollouts_every=4",
            f"train.output_dir={tmp_path / 'rl'}",
        ],
        schema=TrainConfig,
    )
    history = GRPOTrainer(rl_cfg).train()
    fmt = [h["reward/format/mean"] for h in history]
    assert sum(fmt[-4:]) / 4 > sum(fmt[:4]) / 4, fmt  # the hack pays
    assert [h["step"] for h in history if "eval/heldout/acc" in h] == [12, 24]
    assert "reflection/ratio" in history[-1] and "answers/empty_frac" in history[-1]

    run = tmp_path / "rl"
    alarms_file = run / ALARMS_FILE
    alarms = (
        [json.loads(line) for line in alarms_file.read_text().splitlines()] if alarms_file.exists() else []
    )
    assert "format_without_accuracy" in {a["name"] for a in alarms}, (fmt, alarms)
    rollouts = [json.loads(line) for line in (run / ROLLOUTS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rollouts][::2] == [4, 8, 12, 16, 20, 24]
    assert len(rollouts[0]["responses"]) == 4 and "format" in rollouts[0]["responses"][0]["rewards"]

    report = write_report(run)
    html = report.read_text()
    assert "<svg" in html and "data:image/" in html and "format_without_accuracy" in html
    dom = chromium(report.as_uri(), "--dump-dom")
    assert "<polyline" in dom and re.search(r'<img src="data:image/(png|jpeg);base64,', dom)
    assert re.search(r"\d+ of \d+ responses shown", dom)  # the viewer's script ran
    shot = tmp_path / "report.png"
    chromium(report.as_uri(), f"--screenshot={shot}", "--window-size=1280,900")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
