"""The server backend reads MoE routes (routing replay R3) from answers recorded in the formats vLLM
and SGLang document, for the tiny Qwen3-VL-MoE; a server that does not return them is refused with
the flag to start it with.

vLLM (`vllm serve --enable-return-routed-experts`, vllm/entrypoints/openai/*/protocol.py): each
choice's `routed_experts` is base64 of a `.npy` [prompt + response - 1, hidden layers, k]. SGLang
(`--enable-return-routed-experts`, `return_routed_experts` per request): `meta_info.routed_experts`
is base64 of raw int32 of the same shape. Both index every decoder layer.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fake_http import serve

from vlrl.data.prompts import TEMPLATES
from vlrl.models.loading import load_model
from vlrl.rollout import SamplingParams, make_backend

K = 2  # the tiny Qwen3-VL-MoE's experts per token


def routes_of(tokens: int, layers: int) -> np.ndarray:
    """[tokens, layers, K] routes whose every cell tells where it is: token * 100 + layer * 10 + slot."""
    t, layer, s = np.meshgrid(np.arange(tokens), np.arange(layers), np.arange(K), indexing="ij")
    return (t * 100 + layer * 10 + s).astype(np.int32)


class FakeServer:
    """Answers as vLLM or SGLang do, with routes when `routes` is set; records requests."""

    def __init__(self, kind: str, prompt_length: int, layers: int, routes: bool):
        self.kind, self.prompt_length, self.layers, self.routes = kind, prompt_length, layers, routes
        self.tokens = [5, 6, 7]
        self.requests: list[tuple[str, dict | None]] = []

    def _encoded(self, prompt: int, response: int) -> str | None:
        if not self.routes:
            return None
        rows = routes_of(prompt + response - 1, self.layers)
        if self.kind == "sglang":
            return base64.b64encode(rows.tobytes()).decode()
        buffer = io.BytesIO()
        np.save(buffer, rows.astype(np.uint8 if rows.max() < 256 else np.int32))
        return base64.b64encode(buffer.getvalue()).decode()

    def answer(self, path: str, body: dict | None) -> tuple[int, object]:
        self.requests.append((path, body))
        if path == "/v1/models":
            return 200, {"data": [{"id": "tiny"}]}
        if path == "/v1/completions":  # the backend's one-token probe
            return 200, {"choices": [{"index": 0, "routed_experts": self._encoded(len(body["prompt"]), 1)}]}
        if path == "/v1/chat/completions":
            steps = [{"token": f"token_id:{t}", "logprob": -0.5} for t in self.tokens]
            choices = [
                {
                    "index": g,
                    "logprobs": {"content": steps},
                    "routed_experts": self._encoded(self.prompt_length, 3),
                }
                for g in range(body["n"])
            ]
            return 200, {"choices": choices}
        if path == "/generate":
            meta = lambda n: {  # noqa: E731
                "output_token_logprobs": [[-0.5, t, None] for t in self.tokens],
                "routed_experts": self._encoded(n, len(self.tokens))
                if body.get("return_routed_experts")
                else None,
            }
            if "input_ids" in body:  # the probe
                return 200, {"meta_info": meta(len(body["input_ids"])) | {"output_token_logprobs": []}}
            return 200, [{"text": "", "meta_info": meta(self.prompt_length)} for _ in body["text"]]
        return 404, {"error": path}


@pytest.fixture(scope="module")
def lm(tiny_models):
    return load_model(tiny_models["qwen3_vl_moe"])


@pytest.fixture(scope="module")
def prompt(lm, samples):
    return lm.adapter.encode(samples[0], TEMPLATES["answer_only"])  # one image: placeholders are routed too


@pytest.fixture
def server(lm, prompt, request):
    kind, routes = request.param
    layers = lm.model.config.get_text_config().num_hidden_layers
    fake = FakeServer(kind, prompt.length, layers, routes)
    http, url = serve(fake.answer)
    backend = make_backend("server", lm.model, lm.adapter, url=url, kind=kind, retries=0, timeout_s=10)
    yield fake, backend
    http.shutdown()
    http.server_close()


@pytest.mark.parametrize("server", [("vllm", True), ("sglang", True)], indirect=True)
def test_routes_are_read_into_the_completions_in_the_trainers_layout(lm, prompt, server):
    fake, backend = server
    assert backend.record_routes(True)
    (group,) = backend.generate([prompt], SamplingParams(2, 3, seed=0))
    routers = backend.router_layers
    assert routers == list(range(len(lm.adapter.routers(lm.model))))  # every tiny layer is MoE
    expected = torch.from_numpy(routes_of(prompt.length + 2, fake.layers)[:, routers]).to(torch.int16)
    for c in group:
        # prompt + the 2 fed response tokens (the 3rd is never fed), MoE layers in router order, k
        assert c.routes.dtype == torch.int16
        assert torch.equal(c.routes, expected)
    if fake.kind == "sglang":
        assert fake.requests[-1][1]["return_routed_experts"] is True


@pytest.mark.parametrize("server", [("vllm", True)], indirect=True)
def test_dense_layers_in_the_servers_layer_axis_are_dropped(lm, prompt, server):
    fake, backend = server
    backend.router_layers = [1]  # as if layer 0 were dense: the server still reports it
    assert backend.record_routes(True)
    (group,) = backend.generate([prompt], SamplingParams(1, 3))
    expected = routes_of(prompt.length + 2, fake.layers)[:, [1]]
    assert torch.equal(group[0].routes, torch.from_numpy(expected).to(torch.int16))


@pytest.mark.parametrize("server", [("vllm", False), ("sglang", False)], indirect=True)
def test_a_server_without_routes_is_refused_naming_its_flag(server):
    fake, backend = server
    with pytest.raises(RuntimeError, match="--enable-return-routed-experts"):
        backend.record_routes(True)
    assert not backend.record_routes(False)


@pytest.mark.parametrize("server", [("sglang", True)], indirect=True)
def test_routes_of_the_wrong_length_are_an_error(lm, prompt, server):
    fake, backend = server
    backend.record_routes(True)
    fake.prompt_length -= 1  # a server that tokenised the prompt otherwise
    with pytest.raises(Exception, match="route"):
        backend.generate([prompt], SamplingParams(1, 3))


@pytest.mark.parametrize("server", [("vllm", True), ("sglang", True)], indirect=True)
def test_routes_naming_one_expert_twice_are_refused(lm, prompt, server, monkeypatch):
    """A layer the server did not record comes back as zeros: experts 0, 0 for every token. A top-k
    never repeats an expert, so the backend refuses them rather than replay them."""
    fake, backend = server
    backend.record_routes(True)

    def unrecorded_last_layer(tokens: int, layers: int) -> np.ndarray:
        rows = np.arange(tokens * layers * K, dtype=np.int32).reshape(tokens, layers, K)
        rows[:, -1] = 0
        return rows

    monkeypatch.setitem(globals(), "routes_of", unrecorded_last_layer)  # what FakeServer encodes
    with pytest.raises(Exception, match=f"decoder layer {fake.layers - 1} name one expert twice.*R2"):
        backend.generate([prompt], SamplingParams(1, 3))
