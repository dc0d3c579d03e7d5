"""Benchmark files in the layouts they are distributed in, read into vlrl `Sample`s.

Each converter in `CONVERTERS` turns one row of a benchmark's layout into vlrl's canonical row
(`id`, `question`, `images`, `answer`, `choices`; every other key passes through to
`Sample.extra`, where the benchmark's scoring finds `answer_type`, `precision`, `question_type`,
`category`, ...). Converters are pure, like `vlrl.data.formats.FORMATS`; `load_benchmark` then
validates the canonical rows with `vlrl.data.load_samples` (images readable, `<image>` markers
matching, unique ids), so a benchmark row is checked exactly as a training row is, and errors
name the benchmark file and line.

Files are read by `vlrl.data.loading.READERS` (JSONL, a JSON list, parquet with stored images,
csv), plus the JSON object keyed by id that MathVista's `testmini.json` is.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from vlrl.data import DataError, RowError, Sample, load_samples
from vlrl.data.formats import RowProblem
from vlrl.data.loading import READERS, Rows
from vlrl.data.prompts import render_choices
from vlrl.data.sample import IMAGE_MARKER
from vlrl.io import write_jsonl

logger = logging.getLogger(__name__)

_MMMU_IMAGE = re.compile(r"<image (\d+)>")
_MMMU_IMAGE_KEY = re.compile(r"image_(\d+)")
_MMMU_ID = re.compile(r"[a-z]+_(.+)_\d+")  # "validation_Art_Theory_12" -> subject "Art_Theory"


def _required(row: dict, key: str, layout: str) -> Any:
    """`row[key]`, or a problem naming the key when the row lacks it."""
    if row.get(key) is None:
        raise RowProblem("bad layout", key, f"a {layout} row needs '{key}'; this one has {sorted(row)}")
    return row[key]


def python_list(value: Any, key: str) -> list[str]:
    """A list given as such, as JSON, or as a Python literal (MMMU writes `"['a', 'b']"`).

    Parsed with `json.loads` / `ast.literal_eval`, which build values and never run code.

    >>> python_list("['1/2', \\"it's 3\\"]", "options"), python_list("[]", "options")
    (['1/2', "it's 3"], [])
    """
    parsed = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                parsed = None
    if not isinstance(parsed, list | tuple):
        raise RowProblem("bad layout", key, f"expected a list (or its Python repr), got {str(value)[:80]!r}")
    return [str(v) for v in parsed]


def mathvista_row(row: dict) -> dict:
    """MathVista testmini: pid, question, image ("images/1.jpg"), choices, answer, answer_type,
    precision, question_type, metadata {category, task, ...}, query.

    The question is MathVista's bare `question`, led by the "Hint:" line of their `query` (it says
    which answer form is wanted, "... a floating-point number with two decimal places"); choices
    go to `choices`, for the template to list. `metadata.category` and `.task` are lifted to
    `category` and `task`. A parquet copy's `decoded_image` (a stored image) is preferred to the
    `image` path.
    """
    row = dict(row)
    pid = _required(row, "pid", "MathVista")
    question = _required(row, "question", "MathVista")
    query = row.pop("query", None) or ""
    hint = query.split("\n", 1)[0] if query.startswith("Hint:") else None
    image = row.pop("decoded_image", None) or row.pop("image", None)
    row.pop("image", None)
    choices = row.pop("choices", None)
    metadata = row.get("metadata") or {}
    return {
        **row,
        "id": str(pid),
        "question": f"{hint}\n{question}" if hint else question,
        "images": [image] if image else [],
        "choices": [str(c) for c in choices] if choices else None,
        "category": metadata.get("category"),
        "task": metadata.get("task"),
    }


def mmmu_row(row: dict) -> dict:
    """MMMU: id, question with `<image N>` markers, options (a Python list literal as a string),
    answer, image_1 .. image_7, question_type ("multiple-choice" / "open"), subfield.

    Each `<image N>` becomes vlrl's `<image>` and image_N takes that place in `images`, so images
    follow the order the text refers to them in (a repeated reference repeats the image). Images
    the text never mentions go first, each with a marker of its own (vlrl's rule for unmarked
    images). Options that show images (`<image 2>`) are written into the question in the
    template's "A. text" style so that their markers are placed too; they are then kept only as
    `options`, for scoring. `subject` comes from the id ("validation_Art_Theory_12").
    """
    row = dict(row)
    sample_id = str(_required(row, "id", "MMMU"))
    question = _required(row, "question", "MMMU")
    options = python_list(row.pop("options", None) or "[]", "options")
    in_text = any(_MMMU_IMAGE.search(o) for o in options)
    if in_text:
        question = f"{question}\nOptions:\n{render_choices(options)}"
    paths = {int(m.group(1)): row.pop(key) for key in list(row) if (m := _MMMU_IMAGE_KEY.fullmatch(key))}
    referenced = [int(n) for n in _MMMU_IMAGE.findall(question)]
    for n in referenced:
        if paths.get(n) is None:
            raise RowProblem(
                "missing image", f"image_{n}", f"the question shows <image {n}> but image_{n} is empty"
            )
    unreferenced = [n for n in sorted(paths) if paths[n] is not None and n not in referenced]
    subject = _MMMU_ID.fullmatch(sample_id)
    return {
        **row,
        "id": sample_id,
        "question": IMAGE_MARKER * len(unreferenced) + _MMMU_IMAGE.sub(IMAGE_MARKER, question),
        "images": [paths[n] for n in unreferenced + referenced],
        "choices": options if options and not in_text else None,
        "options": options,
        "subject": subject.group(1) if subject else None,
    }


def mathverse_row(row: dict) -> dict:
    """MathVerse: sample_index, problem_index, problem_version, question, image, answer,
    question_type ("multi-choice" / "free-form"), metadata {subject, subfield, ...}, query_cot.

    The question is MathVerse's `question` (its options, for multi-choice, are in the text; in the
    "Vision Only" version the question is in the image and this text may be empty).
    `metadata.subject` and `.subfield` are lifted to `subject` and `subfield`.
    """
    row = dict(row)
    sample_index = _required(row, "sample_index", "MathVerse")
    question = row.pop("question", None) or ""
    image = row.pop("image", None)
    metadata = row.get("metadata") or {}
    return {
        **row,
        "id": str(sample_index),
        "question": question,
        "images": [image] if image else [],
        "subject": metadata.get("subject"),
        "subfield": metadata.get("subfield"),
    }


CONVERTERS: dict[str, Callable[[dict], dict]] = {
    "mathvista": mathvista_row,
    "mmmu": mmmu_row,
    "mathverse": mathverse_row,
}


def _read(path: Path) -> Rows:
    """(line, row) pairs; a JSON object of objects (MathVista's testmini.json) gives its values."""
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(
            str(path), None, None, f"cannot read '{suffix}' files; use one of {', '.join(READERS)}"
        )
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except ValueError:
            data = None  # JSON Lines under a .json name: READERS reads those line by line
        if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
            return list(enumerate(data.values(), 1))
    return READERS[suffix](path)


def load_converted(
    path: str | os.PathLike,
    convert: Callable[[dict], dict],
    image_root: str | os.PathLike | None = None,
    **options: Any,
) -> list[Sample]:
    """Every row of `path` converted by `convert`, then checked and built by `load_samples`.

    The canonical rows go through a temporary JSONL file (image paths made absolute first, against
    `image_root` or the file's folder); a problem found there is reported against the original
    file and line. `options` go to `load_samples`; rows it skips are logged.
    """
    path = Path(path)
    if image_root is not None and not Path(image_root).is_dir():
        raise FileNotFoundError(f"image root (--image-root) is not a folder: {image_root}")
    root = Path(image_root or path.parent).resolve()
    # the canonical file lives in a temporary folder: its image paths are made absolute here
    rows, lines = [], []
    for line, row in _read(path):
        try:
            if isinstance(row, RowProblem):
                raise row
            if not isinstance(row, dict):
                raise RowProblem("wrong type", None, f"row is a {type(row).__name__}, not an object")
            canonical = convert(row)
        except RowProblem as problem:
            raise RowError(problem.kind, str(path), line, problem.field_name, problem.message) from None
        canonical["images"] = [str(root / p) for p in canonical.get("images") or []]
        rows.append(canonical)
        lines.append(line)
    if not rows:
        raise DataError(str(path), None, None, "no rows: nothing to evaluate")
    with tempfile.TemporaryDirectory() as tmp:
        canonical_file = Path(tmp) / f"{path.stem}.jsonl"
        write_jsonl(canonical_file, rows)
        try:
            samples, report = load_samples(canonical_file, format="canonical", image_root=root, **options)
        except RowError as err:
            raise _located(err, path, lines) from None
    for err in report.skipped:
        logger.warning("skipped: %s", _located(err, path, lines))
    return samples


def _located(err: RowError, path: Path, lines: list[int]) -> RowError:
    """A problem of the temporary canonical file, placed at the benchmark file's own line."""
    return RowError(err.kind, str(path), lines[err.line - 1], err.field_name, err.reason)


def _load_vlrl(path: str | os.PathLike, **options: Any) -> list[Sample]:
    """A file in any layout vlrl trains on (`vlrl.data.FORMATS`, detected)."""
    samples, report = load_samples(path, **options)
    for err in report.skipped:
        logger.warning("skipped: %s", err)
    return samples


LOADERS: dict[str, Callable[..., list[Sample]]] = {
    "vlrl": _load_vlrl,
    **{name: partial(load_converted, convert=convert) for name, convert in CONVERTERS.items()},
}


def load_benchmark(path: str | os.PathLike, name: str, **options: Any) -> list[Sample]:
    """The samples of a benchmark file in layout `name` ("vlrl" or a key of CONVERTERS).

    `options` go to `vlrl.data.load_samples` (`image_root`, `max_image_pixels`, `prompt_length`,
    `skip_invalid`, ...).
    """
    if name not in LOADERS:
        raise ValueError(f"unknown benchmark layout {name!r}; valid: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](path, **options)
