"""Images of an OpenAI chat request: `image_url` parts decoded to PIL images.

Accepted URLs are base64 data URLs (what OpenAI clients send) and, only when the server was
started with `--image-root` folders, paths of files under them, as `file:///abs/path` or
`/abs/path`. Remote `http(s)` URLs are refused rather than fetched: a training-side server should
not reach out to the network on a client's behalf, and a slow download would hold the one
generation slot.

Every image goes through the shared loader `vlrl.data.images.load_image`, which refuses one of
more than `max_pixels` pixels from its header, before decoding: a 182 KB PNG can otherwise cost
gigabytes.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image

from vlrl.data.images import DEFAULT_MAX_PIXELS, LIMIT_KEY, ImageError, load_image
from vlrl.serving.errors import RequestError

LIMIT_OPTION = "--max-image-pixels"


@dataclass(frozen=True)
class ImageSource:
    """Where a server takes request images from.

    `roots`: real paths (symlinks resolved) of the folders whose files may be named; none means
    data URLs only. `max_pixels`: the decompression guard (None: no limit).
    """

    roots: tuple[str, ...] = ()
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    @classmethod
    def from_options(
        cls, roots: Iterable[str | Path] = (), max_pixels: int | None = DEFAULT_MAX_PIXELS
    ) -> ImageSource:
        """Check `--image-root` folders and `--max-image-pixels`; a `ValueError` names the bad one."""
        for root in roots:
            if not os.path.isdir(root):
                raise ValueError(f"--image-root '{root}' is not a directory")
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"{LIMIT_OPTION} must be at least 1, got {max_pixels}")
        return cls(tuple(os.path.realpath(root) for root in roots), max_pixels)

    def open(self, url: str, where: str) -> Image.Image:
        """The RGB image at `url`; `where` (e.g. "messages[0].content[1]") names the part in errors."""
        if url.startswith("data:"):
            return self._load(_data_url_bytes(url, where), where)
        return self._load(self._served_path(_local_path(url, where), where), where)

    def _served_path(self, path: str, where: str) -> str:
        """The real path of `path` if it is a readable regular file under a root.

        Every refusal has the same message, so that a client cannot tell a missing file from one
        outside the roots, a folder or an unreadable file, and so map the server's disk. The
        file's type is checked before it is opened: opening a FIFO would block the thread.
        """
        if not self.roots:
            raise RequestError(
                f"{where}: image paths are not served here (the server has no --image-root); "
                "send a base64 data URL",
                param=where,
            )
        try:
            real = os.path.realpath(path)
            served = (
                any(os.path.commonpath([real, root]) == root for root in self.roots)
                and stat.S_ISREG(os.stat(real).st_mode)
                and os.access(real, os.R_OK)
            )
        except (OSError, ValueError):  # ValueError: a NUL byte in the path
            served = False
        if not served:
            raise RequestError(
                f"{where}: '{path[:200]}' is not a readable image file under the server's --image-root",
                param=where,
            )
        return real

    def _load(self, source: str | bytes, where: str) -> Image.Image:
        try:
            return load_image(source, self.max_pixels)
        except ImageError as exc:
            # The shared loader names the training config key; a server's limit is its option.
            message = str(exc).replace(LIMIT_KEY, LIMIT_OPTION)
            raise RequestError(f"{where}: {message}", param=where) from None


def _local_path(url: str, where: str) -> str:
    """The absolute path a `file://` URL or a bare path names; anything else is refused."""
    if url.startswith("file://"):
        return unquote(urlsplit(url).path)
    if url.startswith("/"):
        return url
    scheme = url.split(":", 1)[0] if ":" in url else "a relative path"
    raise RequestError(
        f"{where}: image URL '{url[:80]}' ({scheme}) is not served here; send a base64 data URL, "
        "file:///abs/path or /abs/path",
        param=where,
    )


def _data_url_bytes(url: str, where: str) -> bytes:
    """The encoded image of `data:image/...;base64,<payload>`."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise RequestError(f"{where}: data URL must be 'data:image/...;base64,<data>'", param=where)
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise RequestError(f"{where}: data URL is not valid base64 ({exc})", param=where) from None
