"""The files of a cold-start run, appended row by row so that a re-run can resume.

`<out>` holds kept SFT rows, `<out>.rejected.jsonl` one `{"id", "reason", "detail"}` row per
rejection (a later row for an id overrides an earlier one), `<out>.report.json` the final report.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from vlrl.io import JsonlAppender

REQUEST_FAILED = "request failed"
REASONS = ("wrong answer", "no answer tag", "bad format", "unverifiable truth", REQUEST_FAILED)
"""Why a sample was rejected. All but REQUEST_FAILED are final; failed requests are retried by a re-run."""


class Ledger:
    """What earlier runs decided for each id, and the open files this run appends its decisions to."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.rejected_path = Path(f"{out}.rejected.jsonl")
        self.report_path = Path(f"{out}.report.json")
        self.kept: set[str] = set(_read_ids(self.out, None))
        self.rejected: dict[str, str] = _read_ids(self.rejected_path, "reason")
        self._files: list[JsonlAppender] = []

    def decided(self, sample_id: str) -> bool:
        """Whether an earlier run settled `sample_id` (kept, or rejected for a final reason)."""
        return sample_id in self.kept or self.rejected.get(sample_id, REQUEST_FAILED) != REQUEST_FAILED

    def __enter__(self) -> Ledger:
        self._files = [JsonlAppender(p) for p in (self.out, self.rejected_path)]
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files:
            f.close()

    def keep(self, row: dict) -> None:
        self._files[0].write(row)
        self.kept.add(row["id"])

    def reject(self, sample_id: str, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; valid: {', '.join(REASONS)}")
        self._files[1].write({"id": sample_id, "reason": reason, "detail": detail})
        self.rejected[sample_id] = reason

    def report(self, ids: list[str], resumed: int) -> dict:
        """Counts over the data's `ids`: `total == kept + sum(rejected.values())` after a full run."""
        kept = [i for i in ids if i in self.kept]
        reasons = Counter(self.rejected[i] for i in ids if i not in self.kept and i in self.rejected)
        return {
            "total": len(ids),
            "kept": len(kept),
            "rejected": {reason: reasons.get(reason, 0) for reason in REASONS},
            "resumed": resumed,
        }


def _read_ids(path: Path, key: str | None) -> dict[str, object]:
    """id -> row[key] (None without a key) for each complete row of a file an earlier run wrote.

    A cut-off last line (the run was killed mid-write) is truncated away, since the next append
    would otherwise glue a new row onto it. The file is streamed: cold-start outputs can be large.
    """
    if not path.exists():
        return {}
    found: dict[str, object] = {}
    complete = 0
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break
            complete += len(line)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                found[str(row["id"])] = row.get(key) if key else None
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ValueError(
                    f"{path}:{number}: not a row with an 'id'; fix or move the file to resume"
                ) from None
    if complete < path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(complete)
    return found
