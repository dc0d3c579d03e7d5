"""The metrics part of the report: every logged metric over steps, grouped into sections.

Sections come from a table, first match wins, so a new metric lands somewhere without code
changes ("Other" takes the rest). In a section, the metrics its overlay test accepts share one
chart (rewards by component, train and eval accuracy, time per phase) and every other metric gets
a chart of its own, so that no metric is hidden by another's scale. Metrics that never change
(or are null at every step) are not plotted: flat lines would fill the page, so they are listed
with their value in one folded list.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import NamedTuple

from vlrl.report.charts import Series, fmt, line_chart


def _eval_length(name: str) -> bool:
    return name.startswith("eval/") and name.endswith("/response_length")


class Group(NamedTuple):
    title: str
    member: Callable[[str], bool]
    overlay: Callable[[str], bool]  # members drawn together in one chart (when there are two or more)
    overlay_title: str = ""


def _never(name: str) -> bool:
    return False


GROUPS = (
    Group(
        "Rewards",
        lambda n: n.startswith("reward/") or n == "frac_zero_std_groups",
        lambda n: n.startswith("reward/") and n.endswith("/mean"),
        "Rewards by component",
    ),
    Group(
        "Accuracy",
        lambda n: n == "acc" or (n.startswith("eval/") and not _eval_length(n)),
        lambda n: n == "acc" or n.endswith("/acc"),
        "Accuracy: train and eval",
    ),
    Group(
        "Response length",
        lambda n: n.startswith("response_length/") or _eval_length(n),
        lambda n: n.endswith("mean") or _eval_length(n),
        "Mean response length (tokens)",
    ),
    Group(
        "Reflection and answer health",
        lambda n: n.startswith(("reflection/", "answers/")),
        lambda n: n.startswith("reflection/"),
        "Share of responses with reflection words",
    ),
    # Before KL and Entropy, which would take moe/router_entropy; per-layer loads share one chart.
    Group(
        "Mixture of experts",
        lambda n: n.startswith("moe/"),
        lambda n: n.startswith("moe/layer_"),
        "Expert-load coefficient of variation per MoE layer",
    ),
    Group("KL", lambda n: "kl" in n.rsplit("/", 1)[-1], _never),
    Group("Entropy", lambda n: "entropy" in n, _never),
    Group("Clip fraction", lambda n: n.startswith("clip"), _never),
    Group("Gradient norm", lambda n: n.startswith("grad_norm"), _never),
    Group("Timing", lambda n: n.startswith("timing_s/"), lambda n: True, "Seconds per phase"),
    Group("Throughput", lambda n: n.startswith("perf/"), _never),
    Group("Other", lambda n: True, _never),
)


def metric_names(records: list[dict]) -> list[str]:
    """Every numeric metric of the records, in first-logged order (`step` is the x axis)."""
    names = dict.fromkeys(
        k for r in records for k, v in r.items() if k != "step" and (v is None or isinstance(v, int | float))
    )
    return list(names)


def group_metrics(names: list[str]) -> dict[str, list[str]]:
    """Section title -> its metrics; sections without metrics are left out."""
    out: dict[str, list[str]] = {}
    for name in names:
        title = next(g.title for g in GROUPS if g.member(name))
        out.setdefault(title, []).append(name)
    return {g.title: out[g.title] for g in GROUPS if g.title in out}


def metric_series(records: list[dict], name: str) -> Series:
    """(step, value) of the steps that logged `name`; a logged null (NaN) stays as a gap."""
    return [(r["step"], r[name]) for r in records if name in r]


def constant_value(series: Series) -> str | None:
    """How a metric that never changes reads in the folded list ('0.3', '0.3 (null at 2 steps)',
    'null at every step'), or None when it changes."""
    values = [y for _, y in series if y is not None]
    if len(set(values)) > 1:
        return None
    if not values:
        return "null at every step"
    nulls = len(series) - len(values)
    return fmt(values[0]) + (f" (null at {nulls} step{'s' * (nulls > 1)})" if nulls else "")


def constants_html(constants: dict[str, str]) -> str:
    """The folded list of metrics that never change, with their values."""
    if not constants:
        return ""
    n = len(constants)
    rows = "".join(f"<tr><td>{escape(name)}</td><td>{escape(v)}</td></tr>" for name, v in constants.items())
    return (
        f'<details class="constants"><summary>{n} constant metric{"s" * (n > 1)}</summary>'
        f"<table>{rows}</table></details>"
    )


def section_html(group: Group, names: list[str], records: list[dict]) -> str:
    """One section: the overlay chart when it has two or more metrics, then one chart per metric."""
    together = [n for n in names if group.overlay(n)]
    if len(together) < 2:
        together = []
    charts = []
    if together:
        charts.append(line_chart(group.overlay_title, {n: metric_series(records, n) for n in together}))
    charts += [line_chart(n, {n: metric_series(records, n)}) for n in names if n not in together]
    anchor = "plots-" + group.title.lower().replace(" ", "-")
    return f'<section class="group" id="{anchor}"><h3>{escape(group.title)}</h3><div class="charts">{"".join(charts)}</div></section>'


def plots_html(records: list[dict]) -> str:
    """All sections of the metrics that change, then the folded list of those that do not
    (`records`: metrics.jsonl, at least one step)."""
    names = metric_names(records)
    constants = {n: v for n in names if (v := constant_value(metric_series(records, n))) is not None}
    grouped = group_metrics([n for n in names if n not in constants])
    by_title = {g.title: g for g in GROUPS}
    sections = "".join(section_html(by_title[title], names, records) for title, names in grouped.items())
    return sections + constants_html(constants)
