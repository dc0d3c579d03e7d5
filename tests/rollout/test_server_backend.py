"""The server backend's SGLang client against a local HTTP server answering as SGLang documents.

SGLang needs CUDA, so no real SGLang server can run here; these tests pin the requests the client
sends and how it reads the answers, retries, syncs weights and checks versions. The vLLM client is
tested against a real `vllm serve` in test_vllm_backend.py.
"""

from __future__ import annotations

import pytest
import torch
from fake_http import serve
from safetensors.torch import load_file

from vlrl.data.prompts import TEMPLATES
from vlrl.rollout import SamplingParams, make_backend
from vlrl.rollout.sampling import group_seed
from vlrl.rollout.server import chat_messages


class FakeSGLang:
    """Records requests; answers /generate with scripted token ids, and a 503 first when asked."""

    def __init__(self, tokens: list[int], eos: int):
        self.tokens, self.eos = tokens, eos
        self.requests: list[tuple[str, dict | None]] = []
        self.fail_next = 0
        self.version = "initial"

    def answer(self, path: str, body: dict | None) -> tuple[int, object]:
        self.requests.append((path, body))
        if self.fail_next:
            self.fail_next -= 1
            return 503, {"error": "warming up"}
        if path == "/generate":
            rows = []
            for g in range(len(body["text"])):
                ids = [*self.tokens, self.eos] if g % 2 == 0 else self.tokens
                steps = [[-0.5 - 0.1 * i, t, None] for i, t in enumerate(ids)]
                reason = {"type": "stop"} if g % 2 == 0 else {"type": "length"}
                rows.append(
                    {"text": "", "meta_info": {"output_token_logprobs": steps, "finish_reason": reason}}
                )
            return 200, rows
        if path == "/update_weights_from_disk":
            self.version = body["weight_version"]
            return 200, {"success": True, "message": "ok"}
        if path == "/get_weight_version":
            return 200, {"weight_version": self.version}
        return 404, {"error": path}


@pytest.fixture
def sglang(loaded):
    lm = loaded["qwen2_vl"]
    fake = FakeSGLang(tokens=[5, 6, 7], eos=lm.model.generation_config.eos_token_id[0])

    server, url = serve(fake.answer)
    yield fake, url
    server.shutdown()
    server.server_close()


def _backend(lm, url, **kw):
    return make_backend("server", lm.model, lm.adapter, url=url, kind="sglang", retries=2, timeout_s=10, **kw)


def test_sglang_requests_and_answers(loaded, samples, sglang):
    fake, url = sglang
    lm = loaded["qwen2_vl"]
    prompts = [lm.adapter.encode(s, TEMPLATES["answer_only"]) for s in samples[:2]]
    groups = _backend(lm, url).generate(
        prompts, SamplingParams(4, 16, temperature=0.7, seed=10, first_prompt=3)
    )
    assert [len(g) for g in groups] == [4, 4]
    first = groups[0]
    assert first[0].token_ids.tolist() == [5, 6, 7, fake.eos] and first[0].finish_reason == "stop"
    assert first[1].token_ids.tolist() == [5, 6, 7] and first[1].finish_reason == "length"
    torch.testing.assert_close(first[1].logprobs, torch.tensor([-0.5, -0.6, -0.7]))
    path, body = fake.requests[0]
    assert path == "/generate" and body["return_logprob"] is True
    assert body["text"] == [prompts[0].source.text] * 4
    # Sample 0 has one image, sent as a PNG data URL with each of the G rows.
    assert len(body["image_data"]) == 4 and body["image_data"][0][0].startswith("data:image/png;base64,")
    sampling = body["sampling_params"]
    # Seeds: one stream per row, from the group's seed for global prompt index 3.
    assert [s["sampling_seed"] for s in sampling] == [group_seed(10, 3) + g for g in range(4)]
    assert sampling[0]["temperature"] == 0.7 and sampling[0]["max_new_tokens"] == 16
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    assert set(map(int, sampling[0]["logit_bias"])) == set(lm.adapter.blocked_token_ids(vocab))
    # Sample 1 has two images, in order.
    assert len(fake.requests[1][1]["image_data"][0]) == 2


def test_sglang_transient_errors_are_retried(loaded, samples, sglang):
    fake, url = sglang
    lm = loaded["qwen2_vl"]
    fake.fail_next = 2
    prompt = lm.adapter.encode(samples[0], TEMPLATES["answer_only"])
    assert len(_backend(lm, url).generate([prompt], SamplingParams(2, 4))[0]) == 2
    assert [p for p, _ in fake.requests] == ["/generate"] * 3


def test_sglang_weight_sync_writes_weights_and_checks_the_version(loaded, samples, sglang, tmp_path):
    fake, url = sglang
    lm = loaded["internvl"]
    fake.eos = lm.model.generation_config.eos_token_id[0]
    backend = _backend(lm, url, sync_dir=str(tmp_path / "sync"))
    backend.sync_weights(lm.model)
    path, body = fake.requests[-1]
    assert path == "/update_weights_from_disk" and body["model_path"] == str(tmp_path / "sync")
    # Checkpoint layout, which the server loads: InternVL's files say `language_model.model.*`
    # where the model in memory says `model.language_model.*`.
    written = load_file(str(tmp_path / "sync" / "model.safetensors"))
    lm.model.save_pretrained(tmp_path / "saved")
    assert set(written) == set(load_file(str(tmp_path / "saved" / "model.safetensors")))
    assert "language_model.lm_head.weight" in written and "lm_head.weight" not in written
    torch.testing.assert_close(written["language_model.lm_head.weight"], lm.model.lm_head.weight.detach())
    assert (tmp_path / "sync" / "config.json").is_file()
    prompt = lm.adapter.encode(samples[0], TEMPLATES["answer_only"])
    backend.generate([prompt], SamplingParams(1, 4))  # versions agree
    fake.version = "restarted"
    with pytest.raises(RuntimeError, match="holds weight version 'restarted'"):
        backend.generate([prompt], SamplingParams(1, 4))


def test_a_server_that_samples_a_placeholder_is_refused(loaded, samples, sglang):
    fake, url = sglang
    lm = loaded["qwen2_vl"]
    fake.tokens = [5, lm.adapter.placeholder_token_ids()[0]]
    prompt = lm.adapter.encode(samples[0], TEMPLATES["answer_only"])
    with pytest.raises(RuntimeError, match="sampled blocked token ids"):
        _backend(lm, url).generate([prompt], SamplingParams(2, 4))


def test_chat_messages_put_each_image_where_its_part_was(loaded, samples):
    lm = loaded["qwen2_vl"]
    source = lm.adapter.encode(samples[1], TEMPLATES["answer_only"]).source
    parts = [
        p
        for m in chat_messages(source.messages, source.images)
        if isinstance(m["content"], list)
        for p in m["content"]
    ]
    kinds = [p["type"] for p in parts]
    assert kinds.count("image_url") == 2 and "image" not in kinds
    assert all(
        p["image_url"]["url"].startswith("data:image/png;base64,") for p in parts if p["type"] == "image_url"
    )
