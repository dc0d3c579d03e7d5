"""Cold-start parts: judging, prompts, solution layouts, the output ledger and the client's retry policy."""

from __future__ import annotations

import base64
import doctest
import json
import socket
import time

import pytest

from vlrl.coldstart import RequestFailed, chat, client
from vlrl.coldstart.output import Ledger
from vlrl.coldstart.pipeline import judge, reasoning_text
from vlrl.coldstart.prompts import describe_messages, reason_messages
from vlrl.data.sample import Sample
from vlrl.rewards.tags import caption_format_reward, format_reward

MCQ = Sample(id="m", question="Which is bigger?", answer="B", choices=["cat", "whale"])


@pytest.mark.parametrize(
    ("sample", "response", "reason"),
    [
        (MCQ, "<think>whales are huge</think><answer>whale</answer>", None),
        (MCQ, "<think>hm</think><answer>(B)</answer>", None),
        (MCQ, "<think>hm</think><answer>A</answer>", "wrong answer"),
        (Sample(id="n", question="1/2?", answer="0.5"), "<answer>\\frac{1}{2}</answer>", None),
        (Sample(id="n", question="1/2?", answer="0.5"), "it is 0.5", "no answer tag"),
        (
            Sample(id="n", question="1/2?", answer="0.5"),
            "<think>x</think><answer> </answer>",
            "no answer tag",
        ),
        (
            Sample(id="b", question="Where?", answer=[1, 2, 3, 4]),
            "<answer>[1, 2, 3, 4]</answer>",
            "unverifiable truth",
        ),
        (MCQ, "<think>I write <answer> tags</think><answer>B</answer>", "bad format"),
    ],
)
def test_judge_scores_like_the_accuracy_reward(sample, response, reason):
    assert judge(sample, "A picture.", response, "think_answer").reason == reason


@pytest.mark.parametrize("template", ["think_answer", "caption_think_answer"])
def test_kept_solutions_pass_the_templates_format_reward(template):
    verdict = judge(
        MCQ, " A cat and a whale. ", "<think>whales are huge</think><answer> B </answer>", template
    )
    reward = {"think_answer": format_reward, "caption_think_answer": caption_format_reward}[template]
    assert reward([verdict.solution]) == [1.0]
    assert (
        verdict.solution
        == {
            "think_answer": "<think>A cat and a whale. whales are huge</think><answer>B</answer>",
            "caption_think_answer": "<caption>A cat and a whale.</caption><think>whales are huge</think><answer>B</answer>",
        }[template]
    )


@pytest.mark.parametrize(
    ("response", "reasoning"),
    [
        ("<think> a </think><answer>1</answer>", "a"),
        ("a, so 1</think>\n<answer>1</answer>", "a, so 1"),  # R1 templates open <think> themselves
        ("a, so 1\n<answer>1</answer>", "a, so 1"),
    ],
)
def test_reasoning_text(response, reasoning):
    assert reasoning_text(response) == reasoning


def test_describe_prompt_puts_images_at_their_markers_as_data_urls(images):
    sample = Sample(
        id="s",
        question="A: <image> B: <image> Same colour?",
        answer="no",
        images=[images["small"], images["big"]],
    )
    [message] = describe_messages(sample)
    kinds = [p["type"] for p in message["content"]]
    assert kinds == ["text", "image_url", "text", "image_url", "text"]
    assert (
        message["content"][0]["text"]
        == "Describe the image in detail, including everything needed to answer: A: "
    )
    url = message["content"][3]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == images["big"].read_bytes()
    [no_markers] = describe_messages(
        Sample(id="t", question="Colour?", answer="red", images=[images["small"]])
    )
    assert [p["type"] for p in no_markers["content"]] == ["image_url", "text"]


def test_reason_prompt_is_text_only_with_rendered_options():
    sample = Sample(
        id="s", question="In <image>, which animal?", answer="B", images=["x.png"], choices=["cat", "whale"]
    )
    [message] = reason_messages(sample, "  A whale next to a cat. ")
    content = message["content"]
    assert isinstance(content, str) and "<image>" not in content
    assert "Image description:\nA whale next to a cat.\n" in content
    assert "Question:\nIn [image 1], which animal?\nOptions:\nA. cat\nB. whale" in content


def test_ledger_refuses_a_corrupt_line_naming_it(tmp_path):
    out = tmp_path / "cold.jsonl"
    out.write_text(json.dumps({"id": "a"}) + "\nnot json\n")
    with pytest.raises(ValueError, match=r"cold.jsonl:2: not a row with an 'id'"):
        Ledger(out)


def test_client_doctests():
    assert doctest.testmod(client).failed == 0


def test_client_does_not_retry_a_400(vlm_url, proxy):
    upstream = proxy(vlm_url)
    with pytest.raises(RequestFailed, match=r"HTTP 400: 'messages' must be a non-empty list"):
        chat(upstream.url, "qwen2_vl", [], retries=3, backoff=0.01)
    assert len(upstream.bodies) == 1


def test_client_retries_429_and_a_timeout(vlm_url, proxy):
    messages = [{"role": "user", "content": "hi"}]
    limited = proxy(vlm_url, lambda body, n: 429 if n == 0 else None)
    assert isinstance(chat(limited.url, "qwen2_vl", messages, retries=1, backoff=0.01, max_tokens=2), str)
    assert limited.intercepted == [429] and len(limited.bodies) == 2

    def stall_first(body, n):
        if n == 0:
            time.sleep(0.6)
        return None

    slow = proxy(vlm_url, stall_first)
    assert isinstance(
        chat(slow.url, "qwen2_vl", messages, timeout=0.3, retries=1, backoff=0.01, max_tokens=2), str
    )
    assert len(slow.bodies) == 2


def test_client_gives_up_on_a_dead_server_after_its_retries():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RequestFailed, match=r"failed after 3 attempts; last error: URLError"):
        chat(f"http://127.0.0.1:{port}/v1", "m", [], retries=2, backoff=0.01)
