"""The summary at the top of the report: how far the run got, what it ran, and where its key
metrics started, ended and peaked.

"Best" needs a direction, chosen per metric family in `FAMILIES`: higher is better for rewards
(penalties included: a reward nearer 0 is the better one) and for accuracy, train or eval. Response
length, KL, entropy, clip fraction and gradient norm are diagnostics a healthy run keeps in a band
(too short or too long, a collapsed or exploding entropy), so they get no best. The best is the
highest finite value and the first step that reached it; nulls (NaN) are skipped everywhere.

Run time is the sum of `timing_s/step` (evaluations and checkpoints not included), scaled from
the logged steps when `train.log_every` > 1; a run that never logged it falls back to the file
times, from config.yaml (written at the start) to the last write of metrics.jsonl.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import NamedTuple

from vlrl.io import CONFIG_FILE, METRICS_FILE
from vlrl.monitoring.alarms import Alarm
from vlrl.report.charts import fmt
from vlrl.report.runfiles import RunFiles


class Family(NamedTuple):
    member: Callable[[str], bool]
    higher_is_better: bool  # False: no best is given


FAMILIES = (  # also the order of the summary's rows
    Family(lambda n: n == "reward/total/mean", True),
    Family(lambda n: n == "acc", True),
    Family(lambda n: n.startswith("reward/") and n.endswith("/mean"), True),
    Family(lambda n: n.startswith("eval/") and n.endswith("/acc"), True),
    Family(lambda n: n == "response_length/mean", False),
    Family(lambda n: n in ("kl", "entropy", "clip_frac", "grad_norm"), False),
)

Point = tuple[int, float]  # (step, value)


class KeyMetric(NamedTuple):
    name: str
    start: Point
    end: Point
    best: Point | None  # None for a metric without a better direction


def _finite_points(records: list[dict], name: str) -> list[Point]:
    return [
        (r["step"], r[name])
        for r in records
        if isinstance(r.get(name), int | float) and math.isfinite(r[name])
    ]


def key_metrics(records: list[dict]) -> list[KeyMetric]:
    """Start, end and best of each key metric the run logged with at least one finite value."""
    logged = dict.fromkeys(k for r in records for k in r if k != "step")
    out, taken = [], set()
    for family in FAMILIES:
        for name in logged:
            if name in taken or not family.member(name):
                continue
            taken.add(name)
            points = _finite_points(records, name)
            if not points:
                continue
            # max() keeps the first of equal values: the step that first reached the best.
            best = max(points, key=lambda p: p[1]) if family.higher_is_better else None
            out.append(KeyMetric(name, points[0], points[-1], best))
    return out


def duration(seconds: float) -> str:
    """A rounded human duration.

    >>> duration(42.4), duration(91.5), duration(7260)
    ('42 s', '1 min 32 s', '2 h 01 min')
    """
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def run_time(run_dir: Path, records: list[dict]) -> str:
    """How long the run took and where that number comes from."""
    steps_run = records[-1]["step"]
    times = [v for _, v in _finite_points(records, "timing_s/step")]
    if times and len(times) >= steps_run:
        return f"{duration(sum(times))} (sum of timing_s/step; evaluations and checkpoints not included)"
    if times:
        estimate = sum(times) / len(times) * steps_run
        return (
            f"about {duration(estimate)} (mean timing_s/step of the {len(times)} logged steps"
            f" x {steps_run} steps; evaluations and checkpoints not included)"
        )
    config = run_dir / CONFIG_FILE
    if config.is_file():
        wall = (run_dir / METRICS_FILE).stat().st_mtime - config.stat().st_mtime
        if wall >= 0:
            source = f"from the file times of {CONFIG_FILE} to {METRICS_FILE}'s last write"
            return f"about {duration(wall)} ({source})"
    return f"unknown (no timing_s/step logged, no {CONFIG_FILE} to date the start)"


def alarm_counts(alarms: list[Alarm]) -> str:
    """'3 (kl_spike x2, length_collapse x1)', most frequent first; '0' without alarms."""
    if not alarms:
        return "0"
    kinds = ", ".join(f"{name} x{n}" for name, n in Counter(a.name for a in alarms).most_common())
    return f"{len(alarms)} ({kinds})"


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def steps_run(config: dict, records: list[dict]) -> str:
    """The last step, and the plan when train.steps alone sets it (stages and SFT epochs change
    the length, and the trainer prints that)."""
    done, planned = records[-1]["step"], _get(config, "train.steps")
    plain = not config.get("stages") and _get(config, "sft.epochs") is None
    of = f" of {planned} planned" if plain and isinstance(planned, int) and planned != done else ""
    return f"{done}{of} ({len(records)} logged)"


def config_essentials(config: dict, records: list[dict]) -> dict[str, str]:
    """Model path, algorithm and group size, as far as config.yaml holds them."""
    out = {}
    if _get(config, "model.path") is not None:
        out["model"] = str(_get(config, "model.path"))
    algo = config.get("algo")
    if isinstance(algo, dict):
        keys = ("advantage", "policy_loss", "loss_agg", "kl_beta")
        out["algorithm"] = ", ".join(f"{k} {algo[k]}" for k in keys if algo.get(k) is not None)
    elif "sft" in config:
        out["algorithm"] = "supervised fine-tuning (vlrl sft)"
    # Stages override the group size by dotted or nested keys; the trainer logs the one in force.
    staged = [v for _, v in _finite_points(records, "rollout/group_size")]
    if config.get("stages") and staged:
        out["group size"] = " -> ".join(fmt(v) for v in dict.fromkeys(staged)) + " (by stage)"
    elif _get(config, "rollout.group_size") is not None:
        out["group size"] = str(_get(config, "rollout.group_size"))
    return out


def _eval_accuracy(metrics: list[KeyMetric]) -> str:
    evals = [m for m in metrics if m.name.startswith("eval/")]
    if not evals:
        return "none logged (train.eval_every, data.eval)"
    return ", ".join(
        f"{m.name[len('eval/') : -len('/acc')]} {fmt(m.end[1])} at step {m.end[0]}" for m in evals
    )


def _cell(point: Point | None) -> str:
    if point is None:
        return '<td class="na" title="no better direction: see the note below">-</td>'
    return f"<td>{fmt(point[1])} <small>step {point[0]}</small></td>"


def summary_section(run_dir: Path, run: RunFiles) -> str:
    """The facts list and the key-metric table (`run.metrics`: at least one step)."""
    metrics = key_metrics(run.metrics)
    facts = {
        "steps run": steps_run(run.config, run.metrics),
        "run time": run_time(run_dir, run.metrics),
        "eval accuracy": _eval_accuracy(metrics),
        "alarms": alarm_counts(run.alarms),
    }
    if run.config_text is None:
        facts["config"] = f"no {CONFIG_FILE} in the run folder"
    facts |= config_essentials(run.config, run.metrics)
    facts_html = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts.items())
    if not metrics:
        return f'<dl class="facts">{facts_html}</dl><p class="empty">No key metric logged.</p>'
    rows = "".join(
        f"<tr><td>{escape(m.name)}</td>{_cell(m.start)}{_cell(m.end)}{_cell(m.best)}</tr>" for m in metrics
    )
    note = (
        '<p class="note">best: the highest value and the first step that reached it, for rewards and'
        " accuracy; length, KL, entropy, clip fraction and gradient norm should stay in a band, so"
        " they have no best.</p>"
    )
    head = "<tr><th>metric</th><th>start</th><th>end</th><th>best</th></tr>"
    table = f'<table class="summary">{head}{rows}</table>'
    return f'<dl class="facts">{facts_html}</dl>{table}{note}'
