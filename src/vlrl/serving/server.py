"""`vlrl serve`: an OpenAI-compatible HTTP server over the HF rollout backend.

    server = make_server("ckpt/", "127.0.0.1", 0)      # port 0: any free port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # POST http://HOST:PORT/v1/chat/completions, GET .../v1/models
    server.shutdown(); server.server_close()

Standard library only (`http.server`): connections are handled on threads, generation runs one
request at a time (see `ChatEngine`). Every failure is answered with an OpenAI error body, 400
for a bad request, 404 for an unknown route or model, 500 for an internal error, and the
server keeps running. It is meant for a trusted network (127.0.0.1 by default): image parts may
name files on the server's disk.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from vlrl.serving.engine import ChatEngine, load_engine
from vlrl.serving.errors import RequestError, error_body
from vlrl.serving.protocol import parse_chat_request

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024  # a few large base64 images; more is a client bug


def list_models(engine: ChatEngine, body: bytes) -> dict:
    """`GET /v1/models`: the one served model."""
    return {"object": "list", "data": [engine.model_card()]}


def chat_completions(engine: ChatEngine, body: bytes) -> dict:
    """`POST /v1/chat/completions`."""
    try:
        payload = json.loads(body or b"null")
    except RecursionError:
        raise RequestError(
            "request body nests JSON arrays or objects too deeply (an OpenAI request needs a few levels)"
        ) from None
    except ValueError as exc:  # bad syntax, bad UTF-8, or an integer of more digits than Python reads
        raise RequestError(f"request body is not valid JSON ({exc})") from None
    request = parse_chat_request(payload, engine.max_batch)
    if request.model is not None and request.model != engine.name:
        raise RequestError(
            f"model '{request.model}' is not served here; this server serves '{engine.name}'",
            status=404,
            param="model",
            code="model_not_found",
        )
    return engine.complete(request)


# path -> (method, handler)
ROUTES: dict[str, tuple[str, Callable[[ChatEngine, bytes], dict]]] = {
    "/v1/models": ("GET", list_models),
    "/v1/chat/completions": ("POST", chat_completions),
}


class ChatServer(ThreadingHTTPServer):
    """A threading HTTP server holding the `ChatEngine` its handlers use."""

    daemon_threads = True
    # The listen backlog: socketserver's 5 resets clients that arrive together (50 at once lost
    # 12-40%); the kernel caps it at net.core.somaxconn.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address: tuple[str, int], engine: ChatEngine):
        super().__init__(address, _Handler)
        self.engine = engine


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
            status, payload = 200, self._route(method)(self.server.engine, body)
        except RequestError as exc:
            status, payload = exc.status, exc.body()
        except Exception as exc:  # a bug or a model failure must not take the server down
            logger.exception("internal error answering %s %s", method, self.path)
            status = 500
            payload = error_body(f"internal error: {type(exc).__name__}: {exc}", 500, code="internal_error")
        self._send(status, payload)

    def _route(self, method: str) -> Callable[[ChatEngine, bytes], dict]:
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
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would be parsed as the next request
            if not length.isdigit():
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
) -> ChatServer:
    """A bound, not yet serving, server for the checkpoint in `model_dir` (port 0: any free port)."""
    engine = load_engine(model_dir, max_batch, served_model_name, dtype, device)
    return ChatServer((host, port), engine)
