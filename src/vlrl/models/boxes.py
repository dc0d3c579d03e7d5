"""Box coordinate conventions of VLM families.

Each family expects and emits boxes in its own frame: Qwen2-VL and InternVL normalise to
0-1000 of the image, DeepSeek-VL2 to 0-999, Qwen2.5-VL uses absolute pixels of the image *as
resized by its processor*.
Rewards score in original-image pixels, so a model's boxes go through `to_pixels` first, and
ground truth goes through `from_pixels` when written into prompts or SFT targets.

Every entry has the signature `fn(box, original_size, model_size) -> box` where `box` is
`[x1, y1, x2, y2]` and sizes are `(width, height)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

Box = list[float]
Size = tuple[int, int]


def _scale(box: Sequence[float], sx: float, sy: float) -> Box:
    x1, y1, x2, y2 = box
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def norm1000_to_pixels(box: Sequence[float], original_size: Size, model_size: Size) -> Box:
    """0-1000 normalised -> original pixels (Qwen2-VL, InternVL)."""
    w, h = original_size
    return _scale(box, w / 1000, h / 1000)


def norm1000_from_pixels(box: Sequence[float], original_size: Size, model_size: Size) -> Box:
    w, h = original_size
    return [round(v) for v in _scale(box, 1000 / w, 1000 / h)]


def norm999_to_pixels(box: Sequence[float], original_size: Size, model_size: Size) -> Box:
    """0-999 normalised -> original pixels (DeepSeek-VL2: its demo draws `v / 999 * size`,
    deepseek-ai/DeepSeek-VL2 `deepseek_vl2/serve/app_modules/utils.py`, `parse_ref_bbox`)."""
    w, h = original_size
    return _scale(box, w / 999, h / 999)


def norm999_from_pixels(box: Sequence[float], original_size: Size, model_size: Size) -> Box:
    w, h = original_size
    return [round(v) for v in _scale(box, 999 / w, 999 / h)]


def resized_to_pixels(box: Sequence[float], original_size: Size, model_size: Size) -> Box:
    """Absolute pixels of the processor-resized image -> original pixels (Qwen2.5-VL)."""
    return _scale(box, original_size[0] / model_size[0], original_size[1] / model_size[1])


def resized_from_pixels(box: Sequence[float], original_size: Size, model_size: Size) -> Box:
    return [round(v) for v in _scale(box, model_size[0] / original_size[0], model_size[1] / original_size[1])]


BoxFn = Callable[[Sequence[float], Size, Size], Box]

BOX_CONVENTIONS: dict[str, tuple[BoxFn, BoxFn]] = {
    "norm1000": (norm1000_to_pixels, norm1000_from_pixels),
    "norm999": (norm999_to_pixels, norm999_from_pixels),
    "resized_abs": (resized_to_pixels, resized_from_pixels),
}

_BOX_TEXT = re.compile(
    r"\[\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\]"
)


def rewrite_boxes(text: str, convert: Callable[[list[float]], list[float]]) -> str:
    """Every `[x1, y1, x2, y2]` written in `text`, passed through `convert` (e.g. pixels -> the
    model's convention), formatted as integers.

    >>> rewrite_boxes("box [10, 20, 30, 40].", lambda b: [v * 2 for v in b])
    'box [20, 40, 60, 80].'
    """

    def one(match: re.Match) -> str:
        box = convert([float(v) for v in match.groups()])
        return "[" + ", ".join(str(round(v)) for v in box) + "]"

    return _BOX_TEXT.sub(one, text)
