"""The canonical sample every part of vlrl speaks.

A data file in any supported layout (see `vlrl.data.formats`) is turned into a list of `Sample`.
Rewards receive `Sample.fields()` as keyword arguments, so any extra column in the data reaches
user reward functions unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_MARKER = "<image>"
_MARKER_RE = re.compile(re.escape(IMAGE_MARKER))


class DataError(ValueError):
    """A data row is unusable. The message names the file, line (1-based) and field."""

    def __init__(self, source: str, line: int | None, field_name: str | None, message: str):
        where = source if line is None else f"{source}:{line}"
        if field_name:
            where += f" field '{field_name}'"
        super().__init__(f"{where}: {message}")
        self.source, self.line, self.field_name, self.reason = source, line, field_name, message


@dataclass
class Sample:
    """One prompt with its ground truth.

    `images` are absolute paths (resolved at load time against `data.image_root`, or the data
    file's folder).
    `question` may place images with `<image>` markers; without markers all images go before the
    text. `answer` is a string, a number, or a JSON list (boxes for grounding tasks).
    """

    id: str
    question: str
    answer: Any
    images: list[Path] = field(default_factory=list)
    choices: list[str] | None = None
    solution: str | None = None
    task: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """Everything a reward function may read, as keyword arguments."""
        return {
            "id": self.id,
            "question": self.question,
            "answer": self.answer,
            "images": [str(p) for p in self.images],
            "choices": self.choices,
            "solution": self.solution,
            "task": self.task,
            **self.extra,
        }

    def segments(self) -> list[str | int]:
        """The question split at image markers: text pieces and image indices in reading order.

        With no markers, every image comes first (the convention of Qwen-VL chat templates).
        """
        n_markers = len(_MARKER_RE.findall(self.question))
        if n_markers == 0:
            return [*range(len(self.images)), self.question]
        out: list[str | int] = []
        for i, piece in enumerate(_MARKER_RE.split(self.question)):
            if i > 0:
                out.append(i - 1)
            if piece:
                out.append(piece)
        return out
