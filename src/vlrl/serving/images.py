"""Images of an OpenAI chat request: `image_url` parts decoded to PIL images.

Accepted URLs are base64 data URLs (what OpenAI clients send) and paths on the server's own disk,
as `file:///abs/path` or `/abs/path`. Remote `http(s)` URLs are refused rather than fetched: a
training-side server should not reach out to the network on a client's behalf, and a slow
download would hold the one generation slot.
"""

from __future__ import annotations

import base64
import binascii
import io
from urllib.parse import unquote, urlsplit

from PIL import Image

from vlrl.models.adapters import ImageError, load_image
from vlrl.serving.errors import RequestError


def open_image_url(url: str, where: str) -> Image.Image:
    """The RGB image at `url`; `where` (e.g. "messages[0].content[1]") names the part in errors."""
    if url.startswith("data:"):
        return _open_data_url(url, where)
    if url.startswith("file://"):
        path = unquote(urlsplit(url).path)
    elif url.startswith("/"):
        path = url
    else:
        scheme = url.split(":", 1)[0] if ":" in url else "a relative path"
        raise RequestError(
            f"{where}: image URL '{url[:80]}' ({scheme}) is not served here; send a base64 data URL, "
            "file:///abs/path or /abs/path",
            param=where,
        )
    try:
        return load_image(path)
    except ImageError as exc:
        raise RequestError(f"{where}: {exc}", param=where) from None


def _open_data_url(url: str, where: str) -> Image.Image:
    """Decode `data:image/...;base64,<payload>`."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise RequestError(f"{where}: data URL must be 'data:image/...;base64,<data>'", param=where)
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise RequestError(f"{where}: data URL is not valid base64 ({exc})", param=where) from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(f"{where}: data URL holds no readable image ({exc})", param=where) from None
