"""Row layouts of peer R1-style VLM systems and data sets, each converted to vlrl's canonical row.

A canonical row has `id`, `images` (or `image` for a single one), `question`, `answer` and
optionally `choices`, `solution`, `task`; any other key is passed through to `Sample.extra`.
Every converter in `FORMATS` has the same signature, `row -> canonical row`, and is pure: it
renames and reshapes keys and leaves validation to `vlrl.data.loading`. A converter may raise
`LeftOut` for a well-formed row its layout does not train on; the loader counts those apart.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from vlrl.data.prompts import option_letter

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class RowProblem(ValueError):
    """Why one row is unusable, raised before the loader adds the file name and line.

    `kind` is a short reason ("no answer", "missing image", ...) that `LoadReport` counts.
    """

    def __init__(self, kind: str, field_name: str | None, message: str):
        super().__init__(message)
        self.kind, self.field_name, self.message = kind, field_name, message


class LeftOut(Exception):
    """A well-formed row that a layout deliberately does not train on (ScienceQA's text-only
    questions); the loader counts it under `reason` in `LoadReport.left_out` instead of failing."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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


def scienceqa(row: dict) -> dict:
    """ScienceQA (lupantech/ScienceQA, NeurIPS 2022): a multiple-choice science question with an image.

    Reads the fields of both public forms (ScienceQA's README, "data examples in problem.json";
    demos/Hugging_Face_Dataset_demo.ipynb): `question`, `choices`, `answer` (the index of the right
    choice), `hint`, `image`, `lecture`, `solution`, `task`, `grade`, `subject`, ...
    - the original release, `data/scienceqa/problems.json` (a JSON object pid -> row, one `split`
      per row): `image` is a file name ("image.png") in `images/<split>/<pid>/`, relative to
      problems.json's folder (tools/download.sh unzips the images there); the pid is the row's id;
    - the Hugging Face form (derek-thomas/ScienceQA, one parquet file per split): `image` is the
      picture itself, which the loader has already written to a file and replaced by its path.
    The answer index becomes the choice's letter ("A", "B", ...), which the accuracy reward
    resolves against `choices`. The hint is the question's context as ScienceQA's own prompt
    builder writes it (models/base_prompt.py: `get_context_text` without captions, "N/A" when
    empty, in the QCM order of its final model): "Question: ...\nContext: ...". `solution` is
    kept as the solution, `lecture` and the other fields pass through to `Sample.extra`.
    Text-only questions (no image, about half of ScienceQA) are left out: this layout is the IMG
    subset, the questions about a picture that caption-first RL (MoERL-Vision) trains on.
    """
    row = dict(row)
    image = row.pop("image", None)
    if image is None:
        raise LeftOut("text-only")
    # the original release's line is a position in a JSON object: the pid says which row it is
    pid = f" (pid {row['id']})" if row.get("id") is not None else ""
    choices = row.get("choices")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise RowProblem(
            "bad layout", "choices", f"a ScienceQA row needs a list of choices, got {choices!r}{pid}"
        )
    index = row.get("answer")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(choices):
        raise RowProblem(
            "bad answer",
            "answer",
            f"ScienceQA's answer is the index of the right choice, 0..{len(choices) - 1}; got {index!r}{pid}",
        )
    row["answer"] = option_letter(index)
    question = row.get("question")
    if isinstance(question, str):
        hint = row.pop("hint", None)
        context = hint.strip() if isinstance(hint, str) and hint.strip() else "N/A"
        row["question"] = f"Question: {question}\nContext: {context}"
    row["images"] = _scienceqa_image(image, row)
    return row


def _scienceqa_image(image: Any, row: dict) -> str:
    """The path of a ScienceQA row's image: the original release's file name resolved to
    `images/<split>/<pid>/<name>`, or the path the Hugging Face form's stored picture was given."""
    if isinstance(image, dict) and image.get("path") and image.get("bytes") is None:
        return image["path"]  # an HF Image feature that only references a file
    if not isinstance(image, str):
        raise RowProblem(
            "wrong type",
            "image",
            f"expected an image file name or path, got {type(image).__name__}; pictures stored inside"
            " the file are read from parquet or a datasets folder, not from JSON",
        )
    if "split" not in row or "/" in image:
        return image
    pid, split = row.get("id"), row["split"]
    if pid is None or not isinstance(split, str):
        field_name = "id" if pid is None else "split"
        raise RowProblem(
            "bad layout", field_name, f"the original release's image '{image}' lives in images/<split>/<pid>/"
        )
    return f"images/{split}/{pid}/{image}"


FORMATS: dict[str, Callable[[dict], dict]] = {
    "canonical": canonical,
    # MAYE (GAIR-NLP) rows are canonical: question, answer, CoT solution, image or images
    "maye": canonical,
    "vlm_r1": vlm_r1,
    "r1v": r1v,
    "scienceqa": scienceqa,
}

# the key whose presence marks a layout for format="auto"; rows with neither are canonical
SIGNATURES: dict[str, str] = {"vlm_r1": "conversations", "r1v": "problem", "scienceqa": "lecture"}


def detect_row(row: dict) -> str:
    """The layout one row looks like."""
    return next((fmt for fmt, key in SIGNATURES.items() if key in row), "canonical")


def detect_format(rows: Iterable[Any]) -> str:
    """The layout most rows look like; a vote, so that one malformed row cannot mislead it."""
    votes = Counter(detect_row(row) for row in rows if isinstance(row, dict))
    return votes.most_common(1)[0][0] if votes else "canonical"
