"""Drawing scenes with PIL.

Every shape is drawn without anti-aliasing in one flat colour, so the drawn pixels fill exactly
the object's box (x2, y2 exclusive; see `vlrl.synth.scene`) and a box can be checked against the
image. Digits use Pillow's built-in font (`ImageFont.load_default(size=...)`, embedded in Pillow,
no font files), binarised and stretched to the box.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from PIL import Image, ImageDraw, ImageFont

from vlrl.synth.scene import Obj, Scene

BACKGROUND = (255, 255, 255)
# Saturated colours far apart in RGB, each clearly visible on white (yellow is darkened for that).
RGB = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (230, 180, 0),
    "purple": (140, 40, 180),
    "black": (0, 0, 0),
}
# Digits are rasterised once at this font size and scaled down to their box, so any box size
# gives the same glyph shape.
GLYPH_FONT_PX = 64


def render(scene: Scene, image_size: int) -> Image.Image:
    """The scene drawn on a white RGB square of side `image_size`."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    for obj in scene:
        DRAW[obj["shape"]](image, obj)
    return image


def _corners(box: list[int]) -> list[int]:
    """PIL's inclusive corner coordinates for a box with exclusive x2, y2."""
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - 1, y2 - 1]


def _circle(image: Image.Image, obj: Obj) -> None:
    """A filled circle (an ellipse when the box is not square) touching all four box sides."""
    ImageDraw.Draw(image).ellipse(_corners(obj["box"]), fill=RGB[obj["colour"]])


def _square(image: Image.Image, obj: Obj) -> None:
    """A filled square covering the box."""
    ImageDraw.Draw(image).rectangle(_corners(obj["box"]), fill=RGB[obj["colour"]])


def _triangle(image: Image.Image, obj: Obj) -> None:
    """A filled upright isosceles triangle: base on the box bottom, apex at the top middle."""
    x1, y1, x2, y2 = _corners(obj["box"])
    ImageDraw.Draw(image).polygon([(x1, y2), (x2, y2), ((x1 + x2) / 2, y1)], fill=RGB[obj["colour"]])


def _digit(image: Image.Image, obj: Obj) -> None:
    """The digit `obj["text"]` stretched to fill its box."""
    x1, y1, x2, y2 = obj["box"]
    mask = glyph(obj["text"]).resize((x2 - x1, y2 - y1), Image.Resampling.BOX)
    # Any ink in a pixel keeps it: the glyph's edge rows and columns survive the downscale, so the
    # drawn digit touches every side of its box.
    mask = mask.point(lambda v: 255 if v > 0 else 0)
    image.paste(RGB[obj["colour"]], (x1, y1), mask)


@cache
def glyph(text: str) -> Image.Image:
    """Binary mask ("L", 0 or 255) of `text` in the built-in font, cropped to its ink."""
    font = ImageFont.load_default(size=GLYPH_FONT_PX)
    canvas = Image.new("L", (2 * GLYPH_FONT_PX * len(text), 2 * GLYPH_FONT_PX), 0)
    ImageDraw.Draw(canvas).text((GLYPH_FONT_PX // 2, 0), text, fill=255, font=font)
    ink = canvas.point(lambda v: 255 if v >= 128 else 0)
    return ink.crop(ink.getbbox())


def glyph_width(text: str, height: int) -> int:
    """Width that keeps the glyph's aspect ratio at the given height."""
    w, h = glyph(text).size
    return max(1, round(height * w / h))


DRAW: dict[str, Callable[[Image.Image, Obj], None]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "digit": _digit,
}
