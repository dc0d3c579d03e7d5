"""Fixtures for cold-start tests: real `vlrl serve` servers, a flaky proxy, and a small data file.

No model is faked. The VLM is the micro random qwen2_vl model. For a reasoner whose answers can be
right, the same micro model is first fine-tuned for a few seconds to answer every cold-start
reasoning prompt with `ANSWER_TEXT`, then served like any checkpoint: its greedy answer is known,
so samples whose truth is 3 are kept honestly, by the real extractor and comparator.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from vlrl.coldstart.prompts import reason_messages
from vlrl.data.sample import Sample
from vlrl.models.batching import collate
from vlrl.models.loading import load_model
from vlrl.serving import make_server

ANSWER_TEXT = "<think>two</think><answer>3</answer>"
WORDS = [
    "how",
    "many",
    "shapes",
    "circle",
    "square",
    "red",
    "blue",
    "left",
    "right",
    "image",
    "count",
    "colour",
    "larger",
    "which",
    "(q-1)",
]


def _serve(model_dir: Path):
    server = make_server(model_dir, "127.0.0.1", 0, max_batch=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def vlm_url(tiny_models):
    """`vlrl serve` of the random micro qwen2_vl model (answers without tags)."""
    server = _serve(tiny_models["qwen2_vl"])
    yield _url(server)
    server.shutdown()
    server.server_close()


def _random_prompt(rng: random.Random, tokenizer) -> list[dict]:
    """A cold-start reasoning prompt with a random question and a gibberish description like the VLM's."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in (rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 20))) if i not in special]
    question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
    choices = ["2", "3"] if rng.random() < 0.3 else None
    return reason_messages(
        Sample(id="x", question=question, answer="3", choices=choices), tokenizer.decode(ids)
    )


@pytest.fixture(scope="module")
def answering_model(tiny_models, tmp_path_factory) -> Path:
    """The micro model fine-tuned (70 steps, a few seconds) to answer any reasoning prompt with ANSWER_TEXT.

    Checked on 50 unseen random prompts: the greedy answer was ANSWER_TEXT for all of them.
    """
    out = tmp_path_factory.mktemp("answering") / "answering"
    shutil.copytree(tiny_models["qwen2_vl"], out)
    lm = load_model(out)
    torch.manual_seed(0)
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(lm.model.parameters(), lr=3e-3)
    lm.model.train()
    for _ in range(70):
        seqs = [
            lm.adapter.encode_messages(_random_prompt(rng, lm.adapter.tokenizer), []).with_response(
                lm.adapter.response_ids(ANSWER_TEXT)
            )
            for _ in range(4)
        ]
        batch = collate(seqs, lm.adapter.tokenizer.pad_token_id)
        labels = batch["input_ids"].clone()
        for row, seq in enumerate(seqs):  # learn the response only, not the prompt or the padding
            labels[row, : seq.prompt_length] = -100
            labels[row, seq.length :] = -100
        loss = lm.model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lm.model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def reasoner_url(answering_model):
    """`vlrl serve` of the answering model."""
    server = _serve(answering_model)
    yield _url(server)
    server.shutdown()
    server.server_close()


class Proxy:
    """An HTTP proxy in front of a real server that records requests and can answer some itself.

    `intercept(body, n)` sees each request body (b"" for GET) and how many times that exact body
    came before; it returns a status to answer with instead of forwarding (e.g. 503), or None.
    """

    def __init__(self, upstream: str, intercept: Callable[[bytes, int], int | None] = lambda body, n: None):
        self.upstream, self.intercept = upstream, intercept
        self.bodies: list[bytes] = []
        self.intercepted: list[int] = []
        self._seen: Counter[bytes] = Counter()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = _url(self.server)

    def count(self, fragment: str) -> int:
        """How many requests had `fragment` in their body."""
        return sum(fragment.encode() in body for body in self.bodies)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._forward(b"")

            def do_POST(self):
                self._forward(self.rfile.read(int(self.headers["Content-Length"])))

            def _forward(self, body: bytes) -> None:
                with proxy._lock:
                    n = proxy._seen[body]
                    proxy._seen[body] += 1
                    proxy.bodies.append(body)
                status = proxy.intercept(body, n)
                if status is not None:
                    proxy.intercepted.append(status)
                    data = json.dumps({"error": {"message": f"proxy says {status}"}}).encode()
                    return self._reply(status, data, {"Retry-After": "0"})
                request = urllib.request.Request(
                    proxy.upstream + self.path,
                    data=body or None,
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, data = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                self._reply(status, data, {})

            def _reply(self, status: int, data: bytes, headers: dict) -> None:
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format, *args):
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy():
    """`proxy(upstream, intercept=...)` -> a running `Proxy`, closed after the test."""
    made: list[Proxy] = []

    def make(upstream: str, intercept=lambda body, n: None) -> Proxy:
        made.append(Proxy(upstream, intercept))
        return made[-1]

    yield make
    for p in made:
        p.close()


ROWS = [
    {"id": "right", "image": "img/small.png", "question": "How many shapes? (q-right)", "answer": "3"},
    {
        "id": "choice",
        "image": "img/big.png",
        "question": "How many shapes? (q-choice)",
        "choices": ["2", "3"],
        "answer": "B",
        "task": "count",
        "source": "synthetic",
    },
    {"id": "wrong", "image": "img/small.png", "question": "How many shapes? (q-wrong)", "answer": "4"},
    {"id": "unlucky", "image": "img/small.png", "question": "How many shapes? (q-unlucky)", "answer": "3"},
]


@pytest.fixture
def data_file(tmp_path, images) -> Path:
    """data/train.jsonl with ROWS (images under data/img/); outputs go to another folder."""
    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    for name in ("small", "big"):
        shutil.copy(images[name], folder / "img" / f"{name}.png")
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path
