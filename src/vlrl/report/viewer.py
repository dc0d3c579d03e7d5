"""The rollout viewer: the dumped prompt groups (image, prompt, ground truth, G responses with
their scores) rendered as static HTML, which the page's small script filters and sorts.

Model text is untrusted: every string from rollouts.jsonl goes through `html.escape`, and the
script only toggles `hidden` and reorders elements, it never builds HTML from data. Images are
downscaled thumbnails inlined as data: URLs, so the page is one self-contained file.
"""

from __future__ import annotations

import base64
import io
import json
from functools import cache
from html import escape

from PIL import Image

THUMB_PX = 256  # longest side of an inlined image: enough to judge a rollout, small in the file


@cache
def thumbnail_url(path: str, max_px: int = THUMB_PX) -> str | None:
    """The image at `path` shrunk to fit `max_px`, as a data: URL (PNG or JPEG, whichever is
    smaller); None when the file is missing or unreadable."""
    try:
        with Image.open(path) as image:
            image.thumbnail((max_px, max_px))
            alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            image = image.convert("RGBA" if alpha else "RGB")  # CMYK, 16-bit, ...: what browsers show
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    encoded = {}
    for kind in ("png",) if alpha else ("png", "jpeg"):
        buffer = io.BytesIO()
        image.save(buffer, format=kind, **({"quality": 85} if kind == "jpeg" else {}))
        encoded[kind] = buffer.getvalue()
    kind = min(encoded, key=lambda k: len(encoded[k]))
    return f"data:image/{kind};base64,{base64.b64encode(encoded[kind]).decode()}"


def pick_steps(steps: list[int], limit: int) -> list[int]:
    """At most `limit` of the sorted `steps`, evenly spread, always keeping the first and last.

    >>> pick_steps([1, 2, 3, 4, 5, 6, 7, 8, 9], 3)
    [1, 5, 9]
    """
    if len(steps) <= limit:
        return steps
    if limit == 1:
        return steps[-1:]
    return sorted({steps[round(i * (len(steps) - 1) / (limit - 1))] for i in range(limit)})


def reward_names(records: list[dict]) -> list[str]:
    """Every reward name of the responses, in first-seen order."""
    return list(
        dict.fromkeys(n for r in records for resp in r.get("responses", []) for n in resp.get("rewards", {}))
    )


def _num(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def _data_attrs(resp: dict, names: list[str]) -> str:
    """Numbers the script filters and sorts on; absent where the value is null."""
    values = {"total": resp.get("total"), "advantage": resp.get("advantage")}
    values |= {f"r{i}": resp.get("rewards", {}).get(n) for i, n in enumerate(names)}
    return "".join(f' data-{k}="{float(v)!r}"' for k, v in values.items() if isinstance(v, int | float))


def response_html(index: int, resp: dict, names: list[str]) -> str:
    """One response: its scores on a line, then its escaped text."""
    advantage = resp.get("advantage")
    sign = "pos" if (advantage or 0) > 0 else "neg" if (advantage or 0) < 0 else "zero"
    finish = str(resp.get("finish_reason", "?"))
    scores = " · ".join(f"{escape(n)} <b>{_num(v)}</b>" for n, v in resp.get("rewards", {}).items())
    adv = "-" if advantage is None else f"{advantage:+.3g}"
    meta = (
        f'<span class="idx">#{index + 1}</span> total <b>{_num(resp.get("total"))}</b> · advantage <b>{adv}</b>'
        f' · {escape(str(resp.get("length", "?")))} tokens · <span class="finish {escape(finish)}">{escape(finish)}</span>'
        f' <span class="scores">{scores}</span>'
    )
    return (
        f'<div class="resp {sign}" data-index="{index}"{_data_attrs(resp, names)}>'
        f'<div class="meta">{meta}</div><pre>{escape(str(resp.get("text", "")))}</pre></div>'
    )


def _images_html(paths: list[str]) -> str:
    tags = []
    for path in paths:
        url = thumbnail_url(str(path))
        label = escape(str(path))
        tags.append(
            f'<img src="{url}" alt="{label}" title="{label}">'
            if url
            else f'<span class="missing">image not found or unreadable: {label}</span>'
        )
    return f'<div class="images">{"".join(tags)}</div>' if tags else ""


def group_html(record: dict, names: list[str]) -> str:
    """One dumped prompt group: header, images, prompt, ground truth and the responses."""
    answer = record.get("answer")
    truth = answer if isinstance(answer, str) else json.dumps(answer)
    responses = "".join(response_html(i, r, names) for i, r in enumerate(record.get("responses", [])))
    step = int(record.get("step", 0))
    return (
        f'<article class="rollout" data-step="{step}">'
        f"<h4>step {step} · sample {escape(str(record.get('sample_id', '?')))}</h4>"
        f'<div class="prompt-row">{_images_html(record.get("images", []))}<div class="texts">'
        f'<div class="label">Prompt</div><pre class="prompt">{escape(str(record.get("prompt", "")))}</pre>'
        f'<div class="label">Ground truth</div><pre class="truth">{escape(truth)}</pre></div></div>'
        f'<div class="responses">{responses}</div></article>'
    )


def _options(pairs: list[tuple[str, str]], selected: str) -> str:
    return "".join(
        f'<option value="{escape(v)}"{" selected" if v == selected else ""}>{escape(label)}</option>'
        for v, label in pairs
    )


def controls_html(steps: list[int], names: list[str]) -> str:
    """Step select (the last step shown first), reward filter (key, comparison, value) and sort."""
    step_options = [(str(s), f"step {s}") for s in steps] + [("all", "all steps")]
    keys = [("total", "total"), ("advantage", "advantage")] + [(f"r{i}", n) for i, n in enumerate(names)]
    return (
        '<div class="controls">'
        f'<label>Step <select id="rv-step">{_options(step_options, str(steps[-1]))}</select></label>'
        f'<label>Show responses whose <select id="rv-key">{_options(keys, "total")}</select></label>'
        f'<select id="rv-op">{_options([("any", "is anything"), ("ge", "≥"), ("lt", "<")], "any")}</select>'
        '<input id="rv-value" type="number" step="any" value="0.5" aria-label="threshold">'
        f'<label>Order <select id="rv-sort">{_options([("sampled", "as sampled"), ("desc", "highest first"), ("asc", "lowest first")], "sampled")}</select></label>'
        '<span id="rv-count"></span></div>'
    )


def viewer_html(records: list[dict], max_steps: int = 50) -> str:
    """The viewer over the records of up to `max_steps` dumped steps, or a note when there are none."""
    if not records:
        return (
            '<p class="empty">No rollouts: rollouts.jsonl is absent or empty'
            " (the trainer dumps them every logging.rollouts_every steps).</p>"
        )
    dumped = sorted({int(r.get("step", 0)) for r in records})
    steps = pick_steps(dumped, max_steps)
    shown = set(steps)
    kept = [r for r in records if int(r.get("step", 0)) in shown]
    names = reward_names(kept)
    more = f" (of {len(dumped)} dumped steps; see --max-rollout-steps)" if len(steps) < len(dumped) else ""
    note = f"<p>{len(kept)} prompt groups from {len(steps)} steps{more}.</p>"
    return note + controls_html(steps, names) + "".join(group_html(r, names) for r in kept)
