"""Row layouts of peer R1-style VLM systems, each converted to vlrl's canonical row.

A canonical row has `id`, `images` (or `image` for a single one), `question`, `answer` and
optionally `choices`, `solution`, `task`; any other key is passed through to `Sample.extra`.
Every converter in `FORMATS` has the same signature, `row -> canonical row`, and is pure: it
renames and reshapes keys and leaves validation to `vlrl.data.loading`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class RowProblem(ValueError):
    """Why one row is unusable, raised before the loader adds the file name and line.

    `kind` is a short reason ("no answer", "missing image", ...) that `LoadReport` counts.
    """

    def __init__(self, kind: str, field_name: str | None, message: str):
        super().__init__(message)
        self.kind, self.field_name, self.message = kind, field_name, message


def parse_answer(text: str) -> Any:
    """The ground truth inside a reference text.

    Takes the inside of `<answer>...</answer>` when present (R1-V writes `<answer> 3 </answer>`),
    and decodes a value that is wholly a JSON list (VLM-R1 REC stores boxes as "[10, 20, 30, 40]").

    >>> parse_answer("<answer> 3 </answer>"), parse_answer("[1, 2, 3, 4]"), parse_answer("[A]")
    ('3', [1, 2, 3, 4], '[A]')
    """
    match = _ANSWER_TAG.search(text)
    inner = (match.group(1) if match else text).strip()
    if inner.startswith("["):
        try:
            value = json.loads(inner)
        except json.JSONDecodeError:
            return inner
        return value if isinstance(value, list) else inner
    return inner


def canonical(row: dict) -> dict:
    """vlrl's own layout; `image` is accepted as the key for a single image."""
    row = dict(row)
    image = row.pop("image", None)  # None too: a table has every column in every row
    if image is not None:
        if row.get("images") is not None:
            raise RowProblem("bad layout", "image", "row has both 'image' and 'images'; keep one")
        row["images"] = image
    return row


def vlm_r1(row: dict) -> dict:
    """VLM-R1 (om-ai-lab): question and answer are the first human and gpt turns of `conversations`.

    `<image>` markers stay in the question: they say where each image goes.
    """
    row = canonical(row)
    turns = row.pop("conversations", None)
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise RowProblem(
            "bad layout", "conversations", "expected a list of {'from': ..., 'value': ...} turns"
        )
    # reversed so that the first turn of each role is the one kept
    text = {t["from"]: t.get("value") for t in reversed(turns) if isinstance(t.get("from"), str)}
    if "human" in text:
        row["question"] = text["human"]
    if "gpt" in text:
        value = text["gpt"]
        row["answer"] = parse_answer(value) if isinstance(value, str) else value
    return row


def r1v(row: dict) -> dict:
    """R1-V / open-r1-multimodal: `problem` is the question, `solution` the reference answer.

    The ground truth is the inside of `<answer>` in `solution`; the full text is kept as
    `solution`. Rows that also carry `answer` (EasyR1's geometry3k) keep it as is.
    """
    row = canonical(row)
    if "problem" in row:
        row["question"] = row.pop("problem")
    solution = row.get("solution")
    if "answer" not in row and solution is not None:
        # a non-string solution (a box list) is the answer itself, not a CoT text
        row["answer"] = parse_answer(solution) if isinstance(solution, str) else row.pop("solution")
    return row


FORMATS: dict[str, Callable[[dict], dict]] = {
    "canonical": canonical,
    # MAYE (GAIR-NLP) rows are canonical: question, answer, CoT solution, image or images
    "maye": canonical,
    "vlm_r1": vlm_r1,
    "r1v": r1v,
}

# the key whose presence marks a layout for format="auto"; rows with neither are canonical
SIGNATURES: dict[str, str] = {"vlm_r1": "conversations", "r1v": "problem"}


def detect_row(row: dict) -> str:
    """The layout one row looks like."""
    return next((fmt for fmt, key in SIGNATURES.items() if key in row), "canonical")


def detect_format(rows: Iterable[Any]) -> str:
    """The layout most rows look like; a vote, so that one malformed row cannot mislead it."""
    votes = Counter(detect_row(row) for row in rows if isinstance(row, dict))
    return votes.most_common(1)[0][0] if votes else "canonical"
