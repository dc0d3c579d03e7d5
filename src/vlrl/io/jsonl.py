"""JSON Lines, written and read one way everywhere in vlrl.

Every line is one JSON object, UTF-8 (non-ASCII kept as is), `\\n`-terminated, and never NaN or
infinity (JSON has no such values: a writer that may meet them converts them first, as the
metrics logger writes null). Appends are whole lines, flushed at once, so a killed process leaves
at most one cut-off last line; the reader skips such a line, and an appender opening a file that
ends with one cuts it away first, so that no new record is glued onto it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def jsonl_line(record: Any, default: Callable[[Any], Any] | None = None) -> str:
    """`record` as one JSON line; `default` converts what JSON cannot hold (as in `json.dumps`).

    >>> jsonl_line({"step": 1, "text": "é"})
    '{"step": 1, "text": "é"}\\n'
    """
    return json.dumps(record, ensure_ascii=False, allow_nan=False, default=default) + "\n"


def write_jsonl(
    path: str | Path, records: Iterable[Any], default: Callable[[Any], Any] | None = None
) -> None:
    """Replace the file at `path` with `records`, atomically (a temporary file renamed over it),
    so that a reader or a killed writer never sees half a file. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        f.writelines(jsonl_line(r, default) for r in records)
    os.replace(tmp, path)


def append_jsonl(
    path: str | Path, records: Iterable[Any], default: Callable[[Any], Any] | None = None
) -> None:
    """Append `records` to the file at `path` (created if missing), flushed at once."""
    with JsonlAppender(path, default) as out:
        for record in records:
            out.write(record)


def read_jsonl(path: str | Path) -> list[Any]:
    """The records of a JSONL file, in file order.

    A last line without its newline is the write of a killed process and is skipped; a malformed
    complete line is an error naming the file and the line.
    """
    *complete, _partial = Path(path).read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON line ({exc})") from exc
    return records


def truncate_jsonl(path: str | Path, step: int) -> None:
    """Keep only the records of a step-keyed JSONL file with "step" <= `step`: the steps a resumed
    run redoes must not appear twice. A missing file is left missing."""
    path = Path(path)
    if path.is_file():
        write_jsonl(path, [r for r in read_jsonl(path) if r["step"] <= step])


class JsonlAppender:
    """An open JSONL file that `write` appends whole, flushed records to (a context manager)."""

    def __init__(self, path: str | Path, default: Callable[[Any], Any] | None = None):
        self.path = Path(path)
        self.default = default
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_last_line(self.path)
        self._file = self.path.open("a", encoding="utf-8", newline="\n")

    def write(self, record: Any) -> None:
        self._file.write(jsonl_line(record, self.default))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_partial_last_line(path: Path) -> None:
    """Cut a killed writer's unterminated last line off the end of `path`, without reading it all."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        # Walk back to the last newline; the partial line after it goes.
        end = f.tell()
        block = 1 << 16
        pos = end
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                f.truncate(start + newline + 1)
                return
            pos = start
        f.truncate(0)
