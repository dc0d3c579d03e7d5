"""`build_report(run_dir)`: one self-contained HTML page about a run folder.

The page reads what the trainer wrote: metrics.jsonl (the summary and plots), and where present
alarms.jsonl (a table), rollouts.jsonl (the viewer) and config.yaml, every line checked by
runfiles.py. It loads nothing from the network, and its Content-Security-Policy allows only its
own script (by hash), so even text that escaped escaping could not run or fetch anything.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from pathlib import Path

from vlrl.monitoring.alarms import Alarm
from vlrl.report.assets import CSS, JS
from vlrl.report.plots import plots_html
from vlrl.report.runfiles import RunFiles, read_run
from vlrl.report.summary import summary_section
from vlrl.report.viewer import viewer_html

REPORT_FILE = "report.html"


def alarms_html(alarms: list[Alarm]) -> str:
    """The alarms as a table, oldest first, or a note when there are none."""
    if not alarms:
        return '<p class="empty">No alarms (alarms.jsonl is absent or empty).</p>'
    rows = "".join(
        f'<tr class="{escape(a.severity)}"><td>{a.step}</td><td>{escape(a.severity)}</td>'
        f"<td>{escape(a.name)}</td><td>{escape(a.message)}</td></tr>"
        for a in sorted(alarms, key=lambda a: a.step)
    )
    return f'<table class="alarms"><tr><th>step</th><th>severity</th><th>alarm</th><th>what was seen</th></tr>{rows}</table>'


def config_html(text: str | None) -> str:
    """The run's config.yaml, folded."""
    if text is None:
        return '<p class="empty">No config.yaml in the run folder.</p>'
    return f"<details><summary>config.yaml</summary><pre>{escape(text)}</pre></details>"


def summary_html(run_dir: Path, run: RunFiles) -> str:
    """One line on what the folder holds, and the lines that were skipped."""
    steps = f"steps {run.metrics[0]['step']}–{run.metrics[-1]['step']}"
    skipped = "".join(f'<p class="skipped">{escape(w)}</p>' for w in run.warnings)
    return (
        f"<p>{escape(str(run_dir.resolve()))} · {len(run.metrics)} logged steps ({steps}) · "
        f"{len(run.alarms)} alarms · {len(run.rollouts)} dumped prompt groups</p>{skipped}"
    )


def _csp(script: str) -> str:
    """No network, no plugins, and no script but ours (its SHA-256 hash)."""
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def build_report(run_dir: str | Path, max_rollout_steps: int = 50) -> str:
    """The HTML page for `run_dir`; the viewer keeps at most `max_rollout_steps` dumped steps."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    title = f"vlrl report: {run_dir.resolve().name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_csp(JS)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{CSS}</style></head>
<body><header><h1>{escape(title)}</h1>{summary_html(run_dir, run)}
<nav><a href="#summary">Summary</a><a href="#alarms">Alarms</a><a href="#plots">Metrics</a><a href="#rollouts">Rollouts</a><a href="#config">Config</a></nav></header>
<section id="summary"><h2>Summary</h2>{summary_section(run_dir, run)}</section>
<section id="alarms"><h2>Alarms</h2>{alarms_html(run.alarms)}</section>
<section id="plots"><h2>Metrics</h2>{plots_html(run.metrics)}</section>
<section id="rollouts"><h2>Rollouts</h2>{viewer_html(run.rollouts, max_rollout_steps)}</section>
<section id="config"><h2>Config</h2>{config_html(run.config_text)}</section>
<script>{JS}</script></body></html>
"""


def write_report(run_dir: str | Path, out: str | Path | None = None, max_rollout_steps: int = 50) -> Path:
    """Write the page to `out` (default `<run_dir>/report.html`) and return its path."""
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    path.write_text(build_report(run_dir, max_rollout_steps), encoding="utf-8")
    return path
