"""Scenes: what is in a synthetic image, how it is placed, and how it is described in words.

A scene is a list of objects, each a JSON-ready dict `{"shape", "colour", "box"}` (digits add
`"text"`). `box` is `[x1, y1, x2, y2]` in pixels of the rendered image with x2, y2 exclusive,
the convention of `PIL.Image.getbbox`: the shape's pixels are exactly columns x1..x2-1 and rows
y1..y2-1. Objects are kept in reading order (top row first, then left to right) so captions and
reasoning list them in the order a reader would.

The vocabulary is deliberately small and regular: tiny models with a few-hundred-token BPE
vocabulary learn from these captions.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]
Scene = list[Obj]

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple")

# Sizes are given for 112-pixel images and scaled with the image: the tiny model sees 28x28-pixel
# tokens, so an 18-36 pixel shape covers roughly one token.
BASE_SIZE = 112
SHAPE_SIDE = (18, 36)
MARGIN = 3
GAP = 3

_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "centre", "right")
# Grid cell -> position words; the middle row and column drop out ("top", "left", "centre").
_POSITIONS = {
    (r, c): " ".join(w for w in (row, col) if w not in ("middle", "centre")) or "centre"
    for r, row in enumerate(_ROWS)
    for c, col in enumerate(_COLS)
}
POSITIONS = tuple(_POSITIONS.values())


def scaled(px: int, image_size: int) -> int:
    """A length given for a 112-pixel image, scaled to `image_size`."""
    return max(1, round(px * image_size / BASE_SIZE))


def place_boxes(
    rng: random.Random,
    draw_sizes: Callable[[], list[tuple[int, int]]],
    image_size: int,
    gap: int = GAP,
    tries: int = 1000,
) -> list[list[int]]:
    """Non-overlapping boxes by rejection sampling, one per (width, height) from `draw_sizes()`.

    Boxes keep `gap` pixels (given for 112-pixel images) between them so shapes never touch. A
    box that cannot be placed after a few attempts restarts the whole layout with freshly drawn
    sizes, since an early unlucky box or a set of large sizes (six 36-pixel squares) can block
    the rest.
    """
    margin, gap = scaled(MARGIN, image_size), scaled(gap, image_size)
    for _ in range(tries):
        boxes: list[list[int]] = []
        for w, h in draw_sizes():
            box = _try_box(rng, w, h, image_size, margin, gap, boxes)
            if box is None:
                break
            boxes.append(box)
        else:
            return boxes
    raise RuntimeError(f"cannot place boxes in a {image_size}px image after {tries} layouts")


def _try_box(
    rng: random.Random, w: int, h: int, size: int, margin: int, gap: int, taken: list[list[int]]
) -> list[int] | None:
    """One box of size (w, h) clear of `taken` by `gap` pixels, or None after 50 attempts."""
    for _ in range(50):
        x1 = rng.randint(margin, size - margin - w)
        y1 = rng.randint(margin, size - margin - h)
        box = [x1, y1, x1 + w, y1 + h]
        if all(_apart(box, other, gap) for other in taken):
            return box
    return None


def _apart(a: list[int], b: list[int], gap: int) -> bool:
    """Whether boxes a and b are separated by at least `gap` pixels along some axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def shape_scene(rng: random.Random, specs: list[tuple[str, str]], image_size: int) -> Scene:
    """A scene of (colour, shape) specs at random non-overlapping places and sizes."""
    lo, hi = (scaled(s, image_size) for s in SHAPE_SIDE)
    boxes = place_boxes(rng, lambda: [(s, s) for s in [rng.randint(lo, hi) for _ in specs]], image_size)
    objs = [
        {"shape": shape, "colour": colour, "box": box}
        for (colour, shape), box in zip(specs, boxes, strict=True)
    ]
    return reading_order(objs, image_size)


def random_specs(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """`n` (colour, shape) pairs drawn independently; repeats allowed."""
    return [(rng.choice(COLOURS), rng.choice(SHAPES)) for _ in range(n)]


def cell(box: list[int], image_size: int) -> tuple[int, int]:
    """(row, column) of the box centre in a 3x3 grid over the image."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return min(2, int(3 * cy / image_size)), min(2, int(3 * cx / image_size))


def reading_order(scene: Scene, image_size: int) -> Scene:
    """Objects sorted top row first, then left to right, the order captions list them in."""
    return sorted(scene, key=lambda o: (cell(o["box"], image_size)[0], o["box"][0], o["box"][1]))


def position(box: list[int], image_size: int) -> str:
    """Position words for a box: "top left", "top", "centre", "bottom right", ..."""
    return _POSITIONS[cell(box, image_size)]


def describe(obj: Obj) -> str:
    """The object's name without article: "red circle" or "digit 7"."""
    return f"digit {obj['text']}" if obj["shape"] == "digit" else f"{obj['colour']} {obj['shape']}"


def count_phrase(n: int, noun: str) -> str:
    """Number and noun: 1 circle, 3 circles, 0 red shapes (every noun here has a regular plural)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def join_words(items: list[str]) -> str:
    """Items as in a sentence: a / a and b / a, b and c."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def caption(scene: Scene, image_size: int, positions: bool = True) -> str:
    """One sentence naming every object and, with `positions`, where it is.

    >>> caption([{"shape": "circle", "colour": "red", "box": [4, 4, 30, 30]}], 112)
    'There is 1 shape: a red circle at the top left.'
    """
    noun = "digit" if scene and scene[0]["shape"] == "digit" else "shape"
    if not scene:
        return f"There are no {noun}s."
    verb = "is" if len(scene) == 1 else "are"
    where = (lambda o: f" at the {position(o['box'], image_size)}") if positions else (lambda o: "")
    parts = [f"a {describe(o)}{where(o)}" for o in scene]
    return f"There {verb} {count_phrase(len(scene), noun)}: {join_words(parts)}."


def captions(scenes: list[Scene], image_size: int, positions: bool = True) -> str:
    """The caption of one image, or "Image 1: ... Image 2: ..." for several."""
    if len(scenes) == 1:
        return caption(scenes[0], image_size, positions)
    return " ".join(f"Image {i}: {caption(s, image_size, positions)}" for i, s in enumerate(scenes, 1))
