"""The one image loader of vlrl: files or bytes -> RGB `PIL.Image`, as transformers loads them.

Like `transformers.image_utils.load_image`, the EXIF orientation is applied (a phone photo stored
sideways is seen upright). Unlike it, transparency is composited onto white rather than dropped:
`convert("RGB")` keeps the colour under a transparent pixel, usually black, so a black diagram
on a transparent PNG would become an all-black image. Before any pixel is decoded, the pixel count
read from the header is checked against a limit: a 140 KB PNG can declare 12000x12000 pixels and
cost gigabytes once decoded.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 64_000_000
"""Default decompression-guard limit: twice an 8K frame (7680x4320, HR-Bench 8K's, about 33 MP),
192 MB once decoded as RGB, and below PIL's own 89 MP warning threshold."""

LIMIT_KEY = "data.max_image_pixels"
"""The config key that raises the limit, named by the error that refuses an image."""

_SWAPPED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 or 270 degrees
_EXIF_ORIENTATION = 0x0112


class ImageError(ValueError):
    """An image could not be opened or is refused; the message names the file ("image data" for bytes)."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than the decompression guard allows."""


def load_image(source: str | Path | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image at `source` (a path, or the encoded bytes of an image) as upright RGB.

    Raises `ImageError` when it cannot be read, or when it has more than `max_pixels` pixels
    (None: no limit), before decoding it.
    """
    name = _name(source)
    with _open(source, max_pixels) as im:
        try:
            return _to_rgb(ImageOps.exif_transpose(im))
        except Exception as exc:  # PIL raises assorted types (OSError, SyntaxError, ...) on corrupt data
            raise ImageError(f"cannot read {name}: {type(exc).__name__}: {exc}") from exc


def verify_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Raise `ImageError` unless `path` is an image PIL can read within `max_pixels`.

    Reads the header and checks the file's structure (`Image.verify`) without decoding pixels,
    so that a whole data set can be checked quickly before training.
    """
    with _open(path, max_pixels) as im:
        try:
            im.verify()
        except Exception as exc:  # PIL raises assorted types on corrupt files
            raise ImageError(f"cannot read {_name(path)}: {type(exc).__name__}: {exc}") from exc


@functools.lru_cache(maxsize=65536)
def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the image as `load_image` returns it (EXIF orientation applied), from
    the header alone."""
    with _open(path, None) as im:
        width, height = im.size
        if im.getexif().get(_EXIF_ORIENTATION) in _SWAPPED_ORIENTATIONS:
            return height, width
        return width, height


def _open(source: str | Path | bytes, max_pixels: int | None) -> Image.Image:
    """The image opened lazily (header read, pixels not decoded), refused if over `max_pixels`."""
    name = _name(source)
    try:
        # No warnings.catch_warnings() around this to hide PIL's own DecompressionBombWarning (over
        # 89 MP, when data.max_image_pixels allows that much): entering it re-arms every
        # once-per-place warning of the process, and one image per sample would repeat them all.
        im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is refused by PIL's own limit (PIL.Image.MAX_IMAGE_PIXELS): {exc}") from exc
    except Exception as exc:  # PIL raises assorted types on unreadable data
        raise ImageError(f"cannot read {name}: {type(exc).__name__}: {exc}") from exc
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        im.close()
        raise ImageTooLargeError(
            f"{name} is {width}x{height} = {width * height:,} pixels, over the limit "
            f"of {max_pixels:,} pixels ({LIMIT_KEY}); raise {LIMIT_KEY} to load it"
        )
    return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto a white background."""
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _name(source: str | Path | bytes) -> str:
    """How errors name an image: "image 'path'", or "image data" for bytes."""
    return "image data" if isinstance(source, bytes) else f"image '{source}'"
