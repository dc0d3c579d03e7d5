"""Fixtures for serving tests: `vlrl serve` of the micro qwen2_vl model, in-process on a free port."""

from __future__ import annotations

import json
import struct
import threading
import urllib.error
import urllib.request
import zlib

import pytest

from vlrl.serving import make_server


@pytest.fixture(scope="module")
def server(tiny_models, images):
    """A running server (max_batch 4, paths served from the `images` folder) in a background
    thread, shut down after the module."""
    srv = make_server(
        tiny_models["qwen2_vl"], "127.0.0.1", 0, max_batch=4, image_roots=[images["small"].parent]
    )
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def api(server):
    """`api(path, body=None, data=None, method=None) -> (status, decoded JSON)`: real HTTP, errors included."""
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def call(path: str, body=None, data: bytes | None = None, method: str | None = None):
        payload = data if data is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            base + path, data=payload, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    return call


@pytest.fixture(scope="session")
def png_header():
    """`png_header(width, height)`: a 65-byte PNG that declares width x height RGB pixels and holds
    none, a decompression bomb as far as a loader that trusts the header is concerned."""
    return _png_header


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
