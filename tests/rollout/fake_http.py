"""A local HTTP server answering from a recorded-engine object, for the server backend's tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(answer: Callable[[str, dict | None], tuple[int, object]]) -> tuple[ThreadingHTTPServer, str]:
    """(server, url) of a thread serving `answer(path, json body or None) -> (status, payload)` (a
    payload of None is an empty body); the caller shuts the server down."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body):
            status, payload = answer(self.path.split("?")[0], body)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._reply(None)

        def do_POST(self):
            self._reply(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
