"""`vlrl serve`: an OpenAI-compatible HTTP server over the HF rollout backend.

    server = make_server("ckpt/", "127.0.0.1", 0)      # port 0: any free port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # POST http://HOST:PORT/v1/chat/completions, GET .../v1/models
    server.shutdown(); server.server_close()

Standard library only (`http.server`): connections are handled on threads, generation runs one
request at a time (see `ChatEngine`). Every failure is answered with an OpenAI error body, 400
for a bad request, 404 for an unknown route or model, 500 for an internal error, and the
server keeps running. Image parts may name files on the server's disk only under the folders
given as `image_roots` (`--image-root`); the API has no authentication, so it binds 127.0.0.1 by
default.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from vlrl.data.images import DEFAULT_MAX_PIXELS
from vlrl.serving.engine import ChatEngine, load_engine
from vlrl.serving.errors import RequestError, error_body
from vlrl.serving.images import ImageSource
from vlrl.serving.protocol import parse_chat_request

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024  # a few large base64 images; more is a client bug


def list_models(server: ChatServer, body: bytes) -> dict:
    """`GET /v1/models`: the one served model."""
    return {"object": "list", "data": [server.engine.model_card()]}


def chat_completions(server: ChatServer, body: bytes) -> dict:
    """`POST /v1/chat/completions`."""
    try:
        payload = json.loads(body or b"null")
    except RecursionError:
        raise RequestError(
            "request body nests JSON arrays or objects too deeply (an OpenAI request needs a few levels)"
        ) from None
    except ValueError as exc:  # bad syntax, bad UTF-8, or an integer of more digits than Python reads
        raise RequestError(f"request body is not valid JSON ({exc})") from None
    engine = server.engine
    request = parse_chat_request(payload, engine.max_batch, server.images)
    if request.model is not None and request.model != engine.name:
        raise RequestError(
            f"model '{request.model}' is not served here; this server serves '{engine.name}'",
            status=404,
            param="model",
            code="model_not_found",
        )
    return engine.complete(request)


# path -> (method, handler)
ROUTES: dict[str, tuple[str, Callable[[ChatServer, bytes], dict]]] = {
    "/v1/models": ("GET", list_models),
    "/v1/chat/completions": ("POST", chat_completions),
}


class ChatServer(ThreadingHTTPServer):
    """A threading HTTP server holding the `ChatEngine` and the `ImageSource` its handlers use."""

    daemon_threads = True
    # The listen backlog: socketserver's 5 resets clients that arrive together (50 at once lost
    # 12-40%); the kernel caps it at net.core.somaxconn.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address: tuple[str, int], engine: ChatEngine, images: ImageSource | None = None):
        super().__init__(address, _Handler)
        self.engine = engine
        self.images = images or ImageSource()


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive for clients that pool them (the openai package does).
    protocol_version = "HTTP/1.1"
    server: ChatServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        """Route, run and answer one request; every exception becomes an error response."""
        try:
            body = self._read_body()  # read first, so that a rejected request leaves no bytes behind
            status, payload = 200, self._route(method)(self.server, body)
        except RequestError as exc:
            status, payload = exc.status, exc.body()
        except Exception as exc:  # a bug or a model failure must not take the server down
            logger.exception("internal error answering %s %s", method, self.path)
            status = 500
            payload = error_body(f"internal error: {type(exc).__name__}: {exc}", 500, code="internal_error")
        self._send(status, payload)

    def _route(self, method: str) -> Callable[[ChatServer, bytes], dict]:
        path = urlsplit(self.path).path.rstrip("/")
        if path not in ROUTES:
            raise RequestError(
                f"unknown route {method} {path}; routes: "
                + ", ".join(f"{m} {p}" for p, (m, _) in ROUTES.items()),
                status=404,
                code="unknown_url",
            )
        expected, handler = ROUTES[path]
        if method != expected:
            raise RequestError(
                f"{path} takes {expected}, not {method}", status=405, code="method_not_allowed"
            )
        return handler

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        # isdigit() alone takes "²", which int() refuses
        counts = length.isascii() and length.isdigit()
        if not counts or int(length) > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would be parsed as the next request
            if not counts:
                raise RequestError(f"Content-Length {length!r} is not a byte count")
            raise RequestError(f"request body of {length} bytes is over the {MAX_BODY_BYTES} byte limit", 413)
        return self.rfile.read(int(length))

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        logger.info("%s %s", self.address_string(), format % args)


def make_server(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 8,
    served_model_name: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    image_roots: Iterable[str | Path] = (),
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ChatServer:
    """A bound, not yet serving, server for the checkpoint in `model_dir` (port 0: any free port).

    Image paths are served only from under `image_roots` (none: data URLs only); images of more
    than `max_image_pixels` pixels (None: no limit) are refused.
    """
    images = ImageSource.from_options(image_roots, max_image_pixels)  # before the slow model load
    engine = load_engine(model_dir, max_batch, served_model_name, dtype, device)
    return ChatServer((host, port), engine, images)


def is_loopback(host: str) -> bool:
    """Whether a bound address takes connections from this machine only."""
    return ipaddress.ip_address(host).is_loopback
