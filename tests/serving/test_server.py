"""The HTTP layer of `vlrl serve` without a model: a stub engine answers `GET /v1/models`."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from vlrl.serving.server import ChatServer


class StubEngine:
    name = "stub"

    def model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "vlrl"}


def test_fifty_clients_arriving_at_once_all_get_an_answer():
    """All 50 connect before the server accepts one: each must wait in the listen backlog.

    With socketserver's backlog of 5 the kernel drops the 7th SYN and its connect times out
    (the client would retry after 1 s, or give up with a reset under load).
    """
    with ChatServer(("127.0.0.1", 0), StubEngine()) as server:
        clients = [socket.create_connection(server.server_address, timeout=0.5) for _ in range(50)]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with ThreadPoolExecutor(50) as pool:
                answers = list(pool.map(lambda sock: _get_models(server, sock), clients))
        finally:
            server.shutdown()
    assert [status for status, _ in answers] == [200] * 50
    assert all(body["data"][0]["id"] == "stub" for _, body in answers)


def _get_models(server: ChatServer, sock: socket.socket) -> tuple[int, dict]:
    """`GET /v1/models` over an already connected socket."""
    sock.settimeout(20)
    conn = http.client.HTTPConnection(*server.server_address)
    conn.sock = sock
    conn.request("GET", "/v1/models")
    response = conn.getresponse()
    answer = response.status, json.load(response)
    conn.close()
    return answer


@pytest.mark.parametrize("length", ["abc", "\u00b2", "-1"])
def test_a_content_length_that_is_not_a_byte_count_is_a_400(length):
    with ChatServer(("127.0.0.1", 0), StubEngine()) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            conn = http.client.HTTPConnection(*server.server_address, timeout=20)
            conn.putrequest("GET", "/v1/models")
            conn.putheader("Content-Length", length)
            conn.endheaders()
            response = conn.getresponse()
            status, body = response.status, json.load(response)
            conn.close()
        finally:
            server.shutdown()
    assert status == 400
    assert body["error"]["message"] == f"Content-Length {length!r} is not a byte count"
