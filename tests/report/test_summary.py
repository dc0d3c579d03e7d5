"""The report's summary: start, end and best of the key metrics, eval accuracy, alarms by kind,
run time and the config essentials, on hand-made run folders with hand-derived numbers."""

import doctest
import json
import os
from pathlib import Path

from vlrl.monitoring.alarms import Alarm, append_alarms
from vlrl.report import build_report, charts, summary
from vlrl.report.summary import KeyMetric, key_metrics, run_time

RECORDS = [  # four steps; "best" below is worked out by hand from these
    {"step": 1, "reward/total/mean": 0.5, "acc": 0.2, "reward/<i>/mean": -0.4, "response_length/mean": 100,
     "kl": 0.0, "timing_s/step": 30.0, "eval/val/acc": 0.3, "lr": 1e-5},
    {"step": 2, "reward/total/mean": 0.9, "acc": 0.6, "reward/<i>/mean": -0.1, "response_length/mean": 140,
     "kl": 0.02, "timing_s/step": 42.0},
    {"step": 3, "reward/total/mean": 0.7, "acc": 0.6, "reward/<i>/mean": None, "response_length/mean": 90,
     "kl": 0.05, "timing_s/step": 31.0, "eval/val/acc": 0.45},
    {"step": 4, "reward/total/mean": 0.8, "acc": 0.5, "reward/<i>/mean": -0.2, "response_length/mean": 120,
     "kl": None, "timing_s/step": 40.4, "eval/val/acc": 0.4},
]  # fmt: skip


def _run(folder: Path, records: list[dict], config: str | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if config is not None:
        (folder / "config.yaml").write_text(config)
    return folder


def test_start_end_and_best_by_hand():
    assert key_metrics(RECORDS) == [
        KeyMetric("reward/total/mean", (1, 0.5), (4, 0.8), best=(2, 0.9)),
        KeyMetric("acc", (1, 0.2), (4, 0.5), best=(2, 0.6)),  # 0.6 again at step 3: the first counts
        KeyMetric("reward/<i>/mean", (1, -0.4), (4, -0.2), best=(2, -0.1)),  # a penalty: nearest 0 is best
        KeyMetric("eval/val/acc", (1, 0.3), (4, 0.4), best=(3, 0.45)),
        KeyMetric("response_length/mean", (1, 100), (4, 120), best=None),  # no better direction
        KeyMetric("kl", (1, 0.0), (3, 0.05), best=None),  # null at step 4: the end is step 3
    ]  # lr is no key metric


def test_summary_on_the_page(tmp_path):
    config = (
        "model:\n  path: runs/<sft>\ntrain:\n  steps: 10\nrollout:\n  group_size: 8\n"
        "algo:\n  advantage: dr_grpo\n  policy_loss: ppo_clip\n  loss_agg: seq_mean_token_sum_norm\n  kl_beta: 0.0\n"
    )
    run = _run(tmp_path / "run", RECORDS, config)
    alarm = Alarm(2, "kl_spike", "kl jumped", "warning")
    append_alarms(run / "alarms.jsonl", [alarm, Alarm(3, "length_collapse", "short", "critical"), alarm])
    html = build_report(run)
    summary = html[html.index('<section id="summary">') : html.index('<section id="alarms">')]
    for fact, value in [
        ("steps run", "4 of 10 planned (4 logged)"),
        ("run time", "2 min 23 s (sum of timing_s/step;"),  # 30 + 42 + 31 + 40.4 = 143.4 s
        ("eval accuracy", "val 0.4 at step 4"),
        ("alarms", "3 (kl_spike x2, length_collapse x1)"),
        ("model", "runs/&lt;sft&gt;"),
        (
            "algorithm",
            "advantage dr_grpo, policy_loss ppo_clip, loss_agg seq_mean_token_sum_norm, kl_beta 0.0",
        ),
        ("group size", "8"),
    ]:
        assert f"<dt>{fact}</dt><dd>{value}" in summary
    assert (
        "<tr><td>reward/total/mean</td><td>0.5 <small>step 1</small></td>"
        "<td>0.8 <small>step 4</small></td><td>0.9 <small>step 2</small></td></tr>"
    ) in summary
    assert "<tr><td>reward/&lt;i&gt;/mean</td><td>-0.4 <small>step 1</small></td>" in summary
    assert "<i>" not in summary
    assert (
        "<tr><td>response_length/mean</td><td>100 <small>step 1</small></td>"
        '<td>120 <small>step 4</small></td><td class="na"'
    ) in summary
    assert html.index('id="summary"') < html.index('id="alarms"') < html.index('id="plots"')


def test_run_time_from_logged_steps_or_file_times(tmp_path):
    every_tenth = [{"step": 10, "timing_s/step": 2.0}, {"step": 20, "timing_s/step": 3.0}]
    run = _run(tmp_path / "a", every_tenth)
    assert run_time(run, every_tenth).startswith(  # mean 2.5 s x 20 steps
        "about 50 s (mean timing_s/step of the 2 logged steps x 20 steps;"
    )
    untimed = [{"step": 1, "acc": 0.5}]
    run = _run(tmp_path / "b", untimed, "model:\n  path: m\n")
    os.utime(run / "config.yaml", (1_000_000, 1_000_000))
    os.utime(run / "metrics.jsonl", (1_000_125, 1_000_125))
    assert run_time(run, untimed).startswith("about 2 min 05 s (from the file times of config.yaml")
    (run / "config.yaml").unlink()
    assert run_time(run, untimed).startswith("unknown")


def test_group_size_by_stage_and_sft_runs(tmp_path):
    staged = [{"step": 1, "rollout/group_size": 16}, {"step": 2, "rollout/group_size": 16},
              {"step": 3, "rollout/group_size": 8}]  # fmt: skip
    config = (
        "train:\n  steps: 100\nrollout:\n  group_size: 4\n"
        "stages:\n- {steps: 2, rollout.group_size: 16}\n- {steps: 1, rollout: {group_size: 8}}\n"
    )
    html = build_report(_run(tmp_path / "staged", staged, config))
    assert "<dt>group size</dt><dd>16 -&gt; 8 (by stage)</dd>" in html
    assert "<dt>steps run</dt><dd>3 (3 logged)</dd>" in html  # stages set the length, not train.steps
    sft = "train:\n  steps: 50\nsft:\n  epochs: 2\n"  # the run ends after 2 epochs or 50 steps
    html = build_report(_run(tmp_path / "sft", [{"step": 1, "loss": 2.0}], sft))
    assert "<dt>algorithm</dt><dd>supervised fine-tuning (vlrl sft)</dd>" in html
    assert "<dt>steps run</dt><dd>1 (1 logged)</dd>" in html
    assert "No key metric logged." in html
    html = build_report(_run(tmp_path / "bare", [{"step": 1, "acc": 0.5}]))
    assert "<dt>config</dt><dd>no config.yaml in the run folder</dd>" in html
    assert "<dt>eval accuracy</dt><dd>none logged" in html and "<dt>alarms</dt><dd>0</dd>" in html


def test_doctests():  # duration() here, tick labels in charts.py
    assert doctest.testmod(summary).failed == 0 and doctest.testmod(charts).failed == 0
