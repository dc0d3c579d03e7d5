"""`build_report` on a crafted run folder: plots, alarms, escaped text, inlined images."""

import argparse
import re

import pytest

from vlrl.cli import COMMANDS
from vlrl.cli import report as cli_report
from vlrl.report import build_report, write_report
from vlrl.report.plots import constant_value, group_metrics

XSS = "<script>alert(1)</script>"  # in a response of the crafted run (conftest.py)


def test_report_has_a_plot_per_group_and_the_alarm(run_dir):
    html = build_report(run_dir)
    # Rewards, accuracy, length and timing overlays; reflection, KL, entropy, clip fraction,
    # gradient norm, throughput: one each. The six constant metrics have no chart.
    assert html.count("<svg") == 10
    for section in [
        "Rewards",
        "Accuracy",
        "Response length",
        "KL",
        "Entropy",
        "Clip fraction",
        "Gradient norm",
        "Timing",
        "Throughput",
    ]:
        assert f"<h3>{section}</h3>" in html
    assert "Rewards by component" in html and "Accuracy: train and eval" in html
    assert "format_without_accuracy" in html
    assert "rose &lt;fast&gt; while" in html  # alarm text is escaped too


def test_model_text_is_escaped_never_raw(run_dir):
    html = build_report(run_dir)
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "4 &amp; more" in html and "How many &lt;red&gt; circles" in html
    assert "runs/tiny/&lt;model&gt;" in html  # config.yaml
    # The only script is the page's own, and the policy allows no other.
    assert html.count("<script>") == 1
    assert "script-src 'sha256-" in html


def test_page_is_self_contained(run_dir):
    html = build_report(run_dir)
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)
    assert 'xmlns="http://www.w3.org/2000/svg"' in html  # the one URL: a namespace, never fetched


def test_images_are_inlined_downscaled_and_missing_ones_named(run_dir):
    html = build_report(run_dir)
    urls = re.findall(r'src="(data:image/(?:png|jpeg);base64,[^"]+)"', html)
    assert len(urls) == 6  # 2 images x 3 steps (the missing one is not an <img>)
    assert max(len(u) for u in urls) < 40_000  # the 900x600 image was shrunk
    assert "image not found or unreadable:" in html and "gone.png" in html


def test_viewer_carries_scores_for_filtering(run_dir):
    html = build_report(run_dir)
    assert html.count('<article class="rollout"') == 6
    assert 'data-total="2.0" data-advantage="1.3" data-r0="1.0" data-r1="1.0"' in html
    assert '<option value="30" selected>' in html  # the last step is shown first
    assert 'class="finish length"' in html


def test_missing_optional_files_are_reported_not_fatal(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "acc": 0.5}\n')
    html = build_report(tmp_path)
    assert "No alarms" in html and "No rollouts" in html and "No config.yaml" in html


def test_rollout_steps_are_limited(run_dir):
    html = build_report(run_dir, max_rollout_steps=2)
    assert html.count('<article class="rollout"') == 4  # steps 10 and 30
    assert 'data-step="20"' not in html


def test_grouping_of_metric_names():
    grouped = group_metrics(
        [
            "reward/format/mean",
            "acc",
            "eval/a/acc",
            "eval/a/response_length",
            "approx_kl",
            "lr",
            "timing_s/gen",
        ]
    )
    assert grouped == {
        "Rewards": ["reward/format/mean"],
        "Accuracy": ["acc", "eval/a/acc"],
        "Response length": ["eval/a/response_length"],
        "KL": ["approx_kl"],
        "Timing": ["timing_s/gen"],
        "Other": ["lr"],
    }


def test_write_report_and_cli(run_dir, tmp_path, capsys):
    assert write_report(run_dir) == run_dir / "report.html"
    assert COMMANDS["report"][0] == "report"
    parser = argparse.ArgumentParser()
    cli_report.add_arguments(parser)
    out = tmp_path / "r.html"
    assert cli_report.run(parser.parse_args([str(run_dir), "--out", str(out)])) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        cli_report.run(parser.parse_args([str(tmp_path / "nope")]))
    with pytest.raises(ValueError, match="--max-rollout-steps"):
        cli_report.run(parser.parse_args([str(run_dir), "--max-rollout-steps", "0"]))


def test_constant_metrics_are_listed_folded_not_plotted(run_dir):
    html = build_report(run_dir)
    plots = html[html.index('<section id="plots">') : html.index('<section id="rollouts">')]
    folded = plots[plots.index('<details class="constants">') :]
    assert "<summary>6 constant metrics</summary>" in folded
    for name, value in [
        ("lr", "1e-05"),
        ("frac_zero_std_groups", "0.3"),
        ("response_length/clip_ratio", "0.05"),
        ("timing_s/update", "1"),
    ]:
        assert f"<tr><td>{name}</td><td>{value}</td></tr>" in folded
        assert f'aria-label="{name}"' not in plots and f"</i>{name} <b>" not in plots  # no chart, no legend
    assert "</i>timing_s/gen <b>" in plots  # its varying neighbours are still overlaid


def test_constant_value_reads_gaps_and_all_null():
    assert constant_value([(1, 0.3), (2, None), (3, 0.3)]) == "0.3 (null at 1 step)"
    assert constant_value([(1, None), (2, None)]) == "null at every step"
    assert constant_value([(1, 0.3), (2, 0.31)]) is None
    assert constant_value([(5, 2.0)]) == "2"


def test_metric_names_are_escaped_in_the_folded_list(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "<b>c</b>": 1.0, "acc": 0.1}\n{"step": 2, "<b>c</b>": 1.0, "acc": 0.2}\n'
    )
    html = build_report(tmp_path)
    assert (
        "<summary>1 constant metric</summary><table><tr><td>&lt;b&gt;c&lt;/b&gt;</td><td>1</td></tr>" in html
    )
    assert "<b>c</b>" not in html
