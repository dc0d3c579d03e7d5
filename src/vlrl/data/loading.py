"""Read a data file into `list[Sample]`, checking every row before training starts.

A bad row found after an hour of rollouts costs the hour, so everything a row needs is checked
here: required fields and their types, images on disk and readable, `<image>` markers matching
the images, unique ids, and, given the model adapter's `prompt_length`, the prompt budget.
With `skip_invalid=True` bad rows are skipped, and `LoadReport` accounts for every one of them,
as it does for the well-formed rows a layout leaves out on purpose (`formats.LeftOut`).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from vlrl.data.formats import FORMATS, LeftOut, RowProblem, detect_format
from vlrl.data.images import DEFAULT_MAX_PIXELS, ImageError, ImageTooLargeError, verify_image
from vlrl.data.sample import IMAGE_MARKER, DataError, Sample

if TYPE_CHECKING:
    import datasets

IMAGE_CACHE = ".vlrl_image_cache"
"""Folder, beside the data file, where images stored inside parquet / datasets files are written."""

_CANONICAL_KEYS = {"id", "images", "question", "answer", "choices", "solution", "task"}

BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte order mark some Windows tools write at the start of a file; not part of the data."""

_DATA_FOLDER = "the data file's folder (set data.image_root / --image-root if the images live elsewhere)"

Rows = list[tuple[int, Any]]
"""(1-based line, decoded row or the RowProblem that stopped its decoding), in file order."""


class RowError(DataError):
    """A `DataError` for one row, with the short `kind` of problem that `LoadReport` counts."""

    def __init__(self, kind: str, source: str, line: int, field_name: str | None, message: str):
        super().__init__(source, line, field_name, message)
        self.kind = kind


@dataclass
class LoadReport:
    """What `load_samples` did with each row of one file:
    `n_read == n_loaded + len(skipped) + sum(left_out.values())`."""

    source: str
    n_read: int
    n_loaded: int
    skipped: list[RowError]
    format: str
    left_out: dict[str, int] = field(default_factory=dict)
    """Well-formed rows the format does not train on, counted by reason (ScienceQA's "text-only")."""

    def summary(self) -> str:
        """One line, e.g. "train.jsonl: 98/100 rows loaded, 2 skipped (1 missing image, 1 no answer)"."""
        text = f"{Path(self.source).name}: {self.n_loaded}/{self.n_read} rows loaded"
        if self.left_out:
            reasons = ", ".join(f"{n} {reason}" for reason, n in self.left_out.items())
            text += f", {sum(self.left_out.values())} left out by format {self.format} ({reasons})"
        if not self.skipped:
            return text
        kinds = Counter(err.kind for err in self.skipped).most_common()
        return text + f", {len(self.skipped)} skipped ({', '.join(f'{n} {kind}' for kind, n in kinds)})"


@dataclass
class _Context:
    """Per-file state shared by the row checks."""

    format: str
    base: Path
    base_origin: str
    stem: str
    check_images: bool
    max_image_pixels: int | None
    max_prompt_length: int | None
    prompt_length: Callable[[Sample], int] | None
    image_status: dict[Path, tuple[str, str] | None] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)


def load_samples(
    path: str | os.PathLike,
    format: str = "auto",
    skip_invalid: bool = False,
    max_prompt_length: int | None = None,
    prompt_length: Callable[[Sample], int] | None = None,
    check_images: bool = True,
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    image_root: str | os.PathLike | None = None,
) -> tuple[list[Sample], LoadReport]:
    """Every usable row of `path` as a `Sample`, and a report on the rows.

    `path` is a `.jsonl` / `.json` / `.parquet` / `.csv` file or a `datasets.save_to_disk` folder;
    `format` is a name in `FORMATS` or "auto". Relative image paths resolve against `image_root`,
    or the data file's folder when it is None. `prompt_length`, when given, runs for every row (so
    a row the model's processor rejects is a bad row) and is held to `max_prompt_length` if set.
    The first bad row raises a `RowError` naming file, line and field, unless `skip_invalid`; a
    file with no usable row always raises.
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; valid: auto, {', '.join(FORMATS)}")
    path = Path(path)
    if image_root is not None and not Path(image_root).is_dir():
        raise FileNotFoundError(f"image root (data.image_root, --image-root) is not a folder: {image_root}")
    rows = _read(path)
    ctx = _Context(
        format=detect_format(row for _, row in rows) if format == "auto" else format,
        base=Path(image_root).resolve() if image_root is not None else path.resolve().parent,
        base_origin="the image root" if image_root is not None else _DATA_FOLDER,
        stem=path.stem,
        check_images=check_images,
        max_image_pixels=max_image_pixels,
        max_prompt_length=max_prompt_length,
        prompt_length=prompt_length,
    )
    samples, skipped, left_out = [], [], Counter()
    for line, row in rows:
        try:
            sample = _build(row, line, ctx)
            for check in CHECKS:
                check(sample, ctx)
        except LeftOut as reason:
            left_out[reason.reason] += 1
            continue
        except RowProblem as problem:
            err = RowError(problem.kind, str(path), line, problem.field_name, problem.message)
            if not skip_invalid:
                raise err from None
            skipped.append(err)
            continue
        ctx.ids[sample.id] = line
        samples.append(sample)
    report = LoadReport(str(path), len(rows), len(samples), skipped, ctx.format, dict(left_out))
    if not samples:
        first = f"; first problem: {skipped[0]}" if skipped else ""
        raise DataError(
            str(path), None, None, f"no usable rows, nothing to train on ({report.summary()}){first}"
        )
    return samples, report


# ---------------------------------------------------------------------------------------------
# readers: path -> Rows


def _read(path: Path) -> Rows:
    """The rows of a file or `save_to_disk` folder, by the reader its suffix names."""
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    reader = _read_saved if path.is_dir() else READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            str(path),
            None,
            None,
            f"cannot read '{path.suffix}' files; use a folder saved by "
            f"datasets or one of {', '.join(READERS)}",
        )
    return reader(path)


def _read_jsonl(path: Path) -> Rows:
    """JSON Lines; blank lines are not rows, but still count in line numbers.

    Lines are decoded one by one, so that a line of invalid UTF-8 is that row's problem rather
    than an error about a byte offset somewhere in the file.
    """
    with path.open("rb") as f:
        lines = [(line, raw.removeprefix(BOM) if line == 1 else raw) for line, raw in enumerate(f, 1)]
    return [(line, _decode(raw)) for line, raw in lines if raw.strip()]


def _decode(raw: bytes) -> Any:
    """One JSON row, or the problem that stops it being one (so that it can be skipped)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return RowProblem(
            "invalid utf-8", None, f"not UTF-8 text ({e.reason} at byte {e.start + 1} of the line)"
        )
    try:
        return _finite_or_problem(json.loads(text))
    except json.JSONDecodeError as e:
        return RowProblem("invalid json", None, f"invalid JSON ({e})")


def _read_json(path: Path) -> Rows:
    """A JSON list of rows (line = position in the list), or a JSON object of rows keyed by id
    (ScienceQA's problems.json: each row gets its key as `id` unless it has one); many `.json`
    files are JSON Lines instead."""
    data = path.read_bytes().removeprefix(BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(str(path), line, None, f"not UTF-8 text ({e.reason} at byte {e.start + 1})") from None
    if not text.lstrip().startswith(("[", "{")):
        return _read_jsonl(path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        if not text.lstrip().startswith("["):
            return _read_jsonl(path)  # JSON Lines: one object per line
        # one broken element makes the whole list unreadable, so this cannot be skipped
        raise DataError(str(path), e.lineno, None, f"invalid JSON ({e.msg}, column {e.colno})") from None
    if isinstance(rows, dict):
        if not rows or not all(isinstance(row, dict) for row in rows.values()):
            return _read_jsonl(path)  # a single-row JSON Lines file
        rows = [{"id": key} | row for key, row in rows.items()]
    return [(line, _finite_or_problem(row)) for line, row in enumerate(rows, 1)]


def _finite_or_problem(row: Any) -> Any:
    """The row, or the RowProblem of its first non-finite number (so that it can be skipped)."""
    try:
        return finite(row)
    except RowProblem as problem:
        return problem


def finite(value: Any, where: str | None = None) -> Any:
    """`value` unchanged, or a RowProblem naming the first NaN / Infinity inside it.

    Python's json module reads `NaN`, `Infinity` and overflowing numbers like `1e999` although
    JSON has no such values; a NaN answer or box would then score nonsense without any error.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise RowProblem(
            "non-finite number", where, f"{value} is not a JSON number; write null, or the value as a string"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            finite(item, key if where is None else f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            finite(item, f"{where or ''}[{i}]")
    return value


def _read_table(path: Path, builder: str) -> Rows:
    """A parquet or csv file through `datasets` (which restores HF Image features)."""
    import datasets  # imported here: it takes ~0.7 s, and JSON data never needs it

    return _dataset_rows(datasets.load_dataset(builder, data_files=str(path), split="train"), path)


def _read_saved(path: Path) -> Rows:
    """A folder written by `Dataset.save_to_disk`."""
    import datasets  # imported here: it takes ~0.7 s, and JSON data never needs it

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(
            str(path),
            None,
            None,
            f"holds splits {list(ds)}; give one split's folder, e.g. {path / next(iter(ds))}",
        )
    return _dataset_rows(ds, path)


READERS: dict[str, Callable[[Path], Rows]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": partial(_read_table, builder="parquet"),
    ".csv": partial(_read_table, builder="csv"),
}


def _dataset_rows(ds: datasets.Dataset, path: Path) -> Rows:
    """Rows of a `datasets.Dataset` (line = index + 1), with stored images written to files.

    Read as arrow so that images stay undecoded `{"bytes", "path"}` structs: a corrupt image
    then fails its own row's check instead of the whole read.
    """
    cache = path.resolve().parent / IMAGE_CACHE
    rows: Rows = []
    for batch in ds.with_format("arrow").iter(batch_size=1024):
        for row in batch.to_pylist():
            line = len(rows) + 1
            # an id unfit for a file name ("a/b") falls back to the line, so no two rows share a file
            safe = row.get("id") is not None and re.fullmatch(r"[\w.-]+", str(row["id"]))
            name = str(row["id"]) if safe else _default_id(path.stem, line)
            rows.append((line, _store_images(row, name, cache)))
    return rows


def _store_images(row: dict, name: str, cache: Path) -> dict:
    """The row with each stored image (alone or in a list) replaced by a file `<name>_<k>.<ext>`."""
    k = 0
    out = {}
    for key, value in row.items():
        if _is_image(value) or (isinstance(value, list) and value and all(map(_is_image, value))):
            structs = value if isinstance(value, list) else [value]
            paths = [_write_image(s, f"{name}_{k + i}", cache) for i, s in enumerate(structs)]
            k += len(structs)
            value = paths if isinstance(value, list) else paths[0]
        out[key] = value
    return out


def _is_image(value: Any) -> bool:
    """Whether a value is the arrow storage of an HF `Image` feature."""
    return isinstance(value, dict) and value.keys() == {"bytes", "path"}


def _write_image(struct: dict, name: str, cache: Path) -> str | None:
    """Path of the image file for one stored image, written verbatim under `cache`.

    The suffix follows the bytes (a JPEG stays .jpeg, not re-encoded), since some consumers pick
    a MIME type from the suffix. Rewritten on every load so that an edited dataset is not served
    stale images.
    """
    if struct["bytes"] is None:
        return struct["path"]  # the feature only references a file: resolved like any path
    cache.mkdir(exist_ok=True)
    target = cache / (name + _image_suffix(struct["bytes"]))
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(struct["bytes"])
    os.replace(tmp, target)  # atomic: every rank of a multi-process job may load the same file at once
    return str(target)


def _image_suffix(data: bytes) -> str:
    """File suffix for image bytes, by their content; unreadable bytes get .png and fail the image check."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return "." + (im.format or "png").lower()
    except Exception:  # PIL raises assorted types on bad bytes; the image check reports them
        return ".png"


def _default_id(stem: str, line: int) -> str:
    """Id of a row that has none: unique within the file and stable across loads."""
    return f"{stem}-{line}"


# ---------------------------------------------------------------------------------------------
# building and checking one row


def _build(row: Any, line: int, ctx: _Context) -> Sample:
    """The row converted from its layout, with required fields present and of the right types."""
    if isinstance(row, RowProblem):
        raise row
    if not isinstance(row, dict):
        raise RowProblem("wrong type", None, f"row is a {type(row).__name__}, not an object of fields")
    row = FORMATS[ctx.format](row)
    question, answer = row.get("question"), row.get("answer")
    if question is None:
        raise RowProblem("no question", "question", f"row has no question (read as format '{ctx.format}')")
    _expect(isinstance(question, str), "question", question, "a string")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise RowProblem(
            "no answer", "answer", "row has no answer; every sample needs a ground truth to score"
        )
    _expect(
        _is_number(answer) or isinstance(answer, str) or (isinstance(answer, list) and _is_json(answer)),
        "answer",
        answer,
        "a string, a number or a list",
    )
    images = [] if row.get("images") is None else row["images"]
    images = [images] if isinstance(images, str) else images
    _expect(
        isinstance(images, list) and all(isinstance(p, str) for p in images),
        "images",
        images,
        "a path or a list of paths",
    )
    choices = row.get("choices")
    _expect(
        choices is None or (isinstance(choices, list) and all(isinstance(c, str) for c in choices)),
        "choices",
        choices,
        "a list of strings",
    )
    for key in ("solution", "task"):
        _expect(row.get(key) is None or isinstance(row[key], str), key, row.get(key), "a string")
    sample_id = _default_id(ctx.stem, line) if row.get("id") is None else row["id"]
    _expect(
        isinstance(sample_id, str | int) and not isinstance(sample_id, bool),
        "id",
        sample_id,
        "a string or an integer",
    )
    extra = {key: value for key, value in row.items() if key not in _CANONICAL_KEYS}
    for key, value in extra.items():
        _expect(_is_json(value), key, value, "a JSON value (string, number, bool, list, object or null)")
    return Sample(
        id=str(sample_id),
        question=question,
        answer=answer,
        images=[ctx.base / p for p in images],  # an absolute path stays as it is
        choices=choices,
        solution=row.get("solution"),
        task=row.get("task"),
        extra=extra,
    )


def _expect(ok: bool, field_name: str, value: Any, expected: str) -> None:
    """Raise a "wrong type" problem for `field_name` unless `ok`."""
    if not ok:
        raise RowProblem(
            "wrong type", field_name, f"unknown field type {type(value).__name__}; expected {expected}"
        )


def _is_number(value: Any) -> bool:
    """int or float, but not bool (a JSON `true` is no answer to a counting question)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_json(value: Any) -> bool:
    """Whether a value survives a JSON round trip, so that it can reach reward functions and logs."""
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(map(_is_json, value))
    return isinstance(value, dict) and all(isinstance(k, str) and _is_json(v) for k, v in value.items())


def _check_markers(sample: Sample, ctx: _Context) -> None:
    """`<image>` markers are either absent (images go first) or one per image."""
    n_markers = sample.question.count(IMAGE_MARKER)
    if n_markers not in (0, len(sample.images)):
        raise RowProblem(
            "marker mismatch",
            "question",
            f"has {n_markers} {IMAGE_MARKER} markers but the row has "
            f"{len(sample.images)} images; use no marker, or one per image",
        )


def _check_images(sample: Sample, ctx: _Context) -> None:
    """Every image exists and PIL can read it; each path is opened once per load."""
    if not ctx.check_images:
        return
    for path in sample.images:
        if path not in ctx.image_status:
            ctx.image_status[path] = _image_problem(path, ctx)
        if ctx.image_status[path]:
            kind, message = ctx.image_status[path]
            raise RowProblem(kind, "images", message)


def _image_problem(path: Path, ctx: _Context) -> tuple[str, str] | None:
    """(kind, message) of what is wrong with one image file, or None."""
    if not path.is_file():
        return "missing image", (
            f"image not found: {path} (relative image paths resolve against {ctx.base_origin} {ctx.base})"
        )
    try:
        verify_image(path, ctx.max_image_pixels)
    except ImageTooLargeError as e:
        return "image too large", str(e)
    except ImageError as e:
        return "unreadable image", str(e)
    return None


def _check_unique_id(sample: Sample, ctx: _Context) -> None:
    """Ids are unique: rollouts, rewards and eval results are keyed by them."""
    if sample.id in ctx.ids:
        raise RowProblem(
            "duplicate id", "id", f"duplicate id '{sample.id}' (first used at line {ctx.ids[sample.id]})"
        )


def _check_prompt_length(sample: Sample, ctx: _Context) -> None:
    """The model's processor accepts the row, and the prompt, image tokens included, fits the
    budget (both through the model adapter)."""
    if ctx.prompt_length is None:
        return
    try:
        n = ctx.prompt_length(sample)
    except ValueError as e:  # e.g. Qwen2-VL refuses an aspect ratio over 200 (a 10000x20 image)
        raise RowProblem(
            "rejected by processor",
            "images" if sample.images else "question",
            f"the model's processor rejects this row: {e}",
        ) from None
    if ctx.max_prompt_length is not None and n > ctx.max_prompt_length:
        raise RowProblem(
            "prompt too long",
            "question",
            f"prompt is {n} tokens (image tokens included), over the "
            f"limit of {ctx.max_prompt_length}; raise data.max_prompt_length or shorten the row",
        )


# cheapest first; prompt_length may run a processor over the images
CHECKS: tuple[Callable[[Sample, _Context], None], ...] = (
    _check_markers,
    _check_unique_id,
    _check_images,
    _check_prompt_length,
)
