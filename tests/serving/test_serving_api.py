"""`vlrl serve` over real HTTP with the micro qwen2_vl model: OpenAI shapes, sampling, errors."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from vlrl.cli import main
from vlrl.data.prompts import build_messages, get_template
from vlrl.data.sample import Sample
from vlrl.serving.protocol import parse_messages

CHAT = "/v1/chat/completions"


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def data_url(path, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def chat(api, messages, **params) -> dict:
    status, body = api(CHAT, {"messages": messages, "max_tokens": 16, **params})
    assert status == 200, body
    return body


def test_models_lists_the_served_model_by_folder_name(api):
    status, body = api("/v1/models")
    assert status == 200
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["qwen2_vl"]  # tiny_models["qwen2_vl"] is a folder "qwen2_vl"


def test_chat_completion_with_a_data_url_image_has_the_openai_shape(api, images):
    question = text("How many shapes?")
    body = chat(api, user(image(data_url(images["small"])), question), temperature=0, model="qwen2_vl")
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "qwen2_vl" and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # The image really went in: 16 merged patch tokens of a 112x112 image + vision start / end.
    text_only = chat(api, user(question), temperature=0)
    assert usage["prompt_tokens"] - text_only["usage"]["prompt_tokens"] == 16 + 2


def test_file_path_file_url_and_data_url_images_give_the_same_answer(api, images):
    path = images["big"]  # resized by the processor: the same bytes must take the same route
    forms = [data_url(path), str(path), path.as_uri()]
    answers = [chat(api, user(image(url), text("Which colour?")), temperature=0) for url in forms]
    assert len({a["choices"][0]["message"]["content"] for a in answers}) == 1
    assert len({a["usage"]["prompt_tokens"] for a in answers}) == 1


def test_a_request_encodes_exactly_like_the_adapter_encodes_the_sample(server, images):
    """Messages from `build_messages`, sent as OpenAI parts, give the tensors `adapter.encode` gives."""
    sample = Sample(
        id="s",
        question="Left: <image>\nRight: <image>\nWhich image is larger?",
        answer="B",
        images=[images["small"], images["big"]],
        choices=["left", "right"],
    )
    template = get_template("think_answer")
    paths = iter(sample.images)
    openai = [
        {
            "role": m["role"],
            "content": m["content"]
            if isinstance(m["content"], str)
            else [image(str(next(paths))) if p["type"] == "image" else p for p in m["content"]],
        }
        for m in build_messages(sample, template)
    ]
    adapter = server.engine.adapter
    got = adapter.encode_messages(*parse_messages(openai, server.images))
    want = adapter.encode(sample, template)
    assert got.tokens.keys() == want.tokens.keys() and got.vision.keys() == want.vision.keys()
    for key in want.tokens:
        assert torch.equal(got.tokens[key], want.tokens[key]), key
    for key in want.vision:
        assert torch.equal(got.vision[key], want.vision[key]), key
    assert got.prompt_length == want.prompt_length


def test_n_completions_with_logprobs(api):
    body = chat(api, user(text("Count the shapes.")), n=2, logprobs=True, temperature=1.0, seed=0)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    counted = 0
    for choice in body["choices"]:
        entries = choice["logprobs"]["content"]
        assert 1 <= len(entries) <= 16
        for e in entries:
            assert isinstance(e["token"], str) and e["top_logprobs"] == []
            assert e["logprob"] <= 0.0 and e["bytes"] == list(e["token"].encode())
        counted += len(entries)
    assert counted == body["usage"]["completion_tokens"]  # one entry per generated token


def test_seed_makes_sampling_at_temperature_1_repeatable_even_under_concurrency(api):
    def contents(seed: int) -> list[str]:
        body = chat(api, user(text("Describe the scene.")), n=2, temperature=1.0, seed=seed)
        return [c["message"]["content"] for c in body["choices"]]

    first = contents(3)
    with ThreadPoolExecutor(3) as pool:  # served one at a time; each gets its own seeded generator
        again = list(pool.map(contents, [3, 3, 3]))
    assert again == [first] * 3
    assert contents(4) != first


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
def test_token_limit_ends_with_finish_reason_length(api, limit):
    status, body = api(CHAT, {"messages": user(text("Hi")), limit: 2, "temperature": 0})
    assert status == 200, body
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_stop_string_cuts_the_text_and_counts_tokens_up_to_it(api):
    full = chat(api, user(text("Hi")), temperature=0)
    content = full["choices"][0]["message"]["content"]
    assert len(content) >= 6, "the greedy answer is too short to pick a stop string from"
    stop = content[4:6]
    cut = chat(api, user(text("Hi")), temperature=0, stop=["never there", stop], logprobs=True)
    choice = cut["choices"][0]
    assert choice["message"]["content"] == content[: content.find(stop)]
    assert choice["finish_reason"] == "stop"
    n = cut["usage"]["completion_tokens"]
    assert n < full["usage"]["completion_tokens"] and len(choice["logprobs"]["content"]) == n


def test_multi_turn_conversation_goes_through_the_chat_template(api, images):
    first = user(image(str(images["small"])), text("What is red?"))
    conversation = [
        {"role": "system", "content": "You are terse."},
        *first,
        {"role": "assistant", "content": "A circle."},
        {"role": "user", "content": "And what colour is the background?"},
    ]
    single = chat(api, first, temperature=0)
    multi = chat(api, conversation, temperature=0)
    assert multi["usage"]["prompt_tokens"] > single["usage"]["prompt_tokens"] + 10


def _message(content) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4}


BAD_REQUESTS = {
    "no messages": ({"max_tokens": 4}, 400, "'messages'"),
    "messages not a list": ({"messages": "hi"}, 400, "'messages'"),
    "unknown role": ({"messages": [{"role": "tool", "content": "x"}]}, 400, "role 'tool'"),
    "missing image file": (
        _message([image("/no/such/dir/cat.png")]),
        400,
        "messages[0].content[0]: '/no/such/dir/cat.png' is not a readable image file under the server's "
        "--image-root",
    ),
    "file outside the image root": (
        _message([image("file:///etc/hostname")]),
        400,
        "messages[0].content[0]: '/etc/hostname' is not a readable image file under the server's --image-root",
    ),
    "relative path": (_message([image("cat.png")]), 400, "'cat.png'"),
    "remote url": (_message([image("https://example.com/cat.png")]), 400, "(https) is not served here"),
    "bad base64": (_message([image("data:image/png;base64,@@@")]), 400, "not valid base64"),
    "not an image": (_message([image("data:image/png;base64,aGVsbG8=")]), 400, "cannot read image data"),
    "unknown part": (_message([{"type": "input_audio"}]), 400, "got type 'input_audio'"),
    "negative temperature": ({**_message("hi"), "temperature": -1}, 400, "temperature"),
    "temperature not a number": (
        {**_message("hi"), "temperature": "hot"},
        400,
        "'temperature' must be a finite number, got 'hot'",
    ),
    "temperature 1e-45": (
        {**_message("hi"), "temperature": 1e-45},
        400,
        "must be 0 (greedy) or at least 1e-05",
    ),
    "n over max batch": ({**_message("hi"), "n": 5}, 400, "--max-batch 4"),
    "n zero": ({**_message("hi"), "n": 0}, 400, "'n' must be an integer >= 1"),
    "max_tokens zero": ({**_message("hi"), "max_tokens": 0}, 400, "'max_tokens'"),
    "over the context": ({**_message("hi"), "max_tokens": 10**6}, 400, "context of 4096 tokens"),
    "empty stop": ({**_message("hi"), "stop": [""]}, 400, "'stop'"),
    "logprobs not bool": ({**_message("hi"), "logprobs": "yes"}, 400, "'logprobs'"),
    "streaming": ({**_message("hi"), "stream": True}, 400, "'stream' is not supported"),
    "placeholder in text": (_message("look <|image_pad|>"), 400, "vision placeholder '<|image_pad|>'"),
    "unknown model": ({**_message("hi"), "model": "gpt-4o"}, 404, "model 'gpt-4o' is not served here"),
    "invalid json": (b"{not json", 400, "not valid JSON"),
    "json not an object": (b"[1, 2]", 400, "must be a JSON object"),
    "role not a string": ({"messages": [{"role": ["user"], "content": "x"}]}, 400, "role ['user']"),
    "nested 100000 deep": (b"[" * 100_000 + b"]" * 100_000, 400, "nests JSON arrays or objects too deeply"),
    "nested in a field": (
        b'{"messages": [], "temperature": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        400,
        "too deeply",
    ),
    "integer of 5000 digits": (
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
        400,
        "not valid JSON (Exceeds the limit (4300 digits)",
    ),
    "integer beyond float": ({**_message("hi"), "top_p": 10**400}, 400, "'top_p' must be a finite number"),
    **{
        f"{name} {literal}": (
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "%s": %s}'
            % (name.encode(), literal.encode()),
            400,
            f"'{name}' must be a finite number, got {shown}",
        )
        for name in ("temperature", "top_p")
        for literal, shown in (("Infinity", "inf"), ("-Infinity", "-inf"), ("NaN", "nan"), ("1e999", "inf"))
    },
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_get_openai_errors_naming_the_problem(api, case):
    request, status, fragment = BAD_REQUESTS[case]
    got, body = api(CHAT, data=request) if isinstance(request, bytes) else api(CHAT, request)
    assert got == status
    assert fragment in body["error"]["message"], body
    assert body["error"]["type"] == "invalid_request_error" and "code" in body["error"]
    assert api("/v1/models")[0] == 200  # and the server lives on


def test_decompression_bombs_are_refused_from_the_header_by_data_url_and_by_path(api, images, png_header):
    """144 megapixels declared in 65 bytes: refused before 432 MB of RGB is allocated."""
    bomb = png_header(12000, 12000)
    path = images["small"].parent / "bomb.png"  # under the server's --image-root
    path.write_bytes(bomb)
    over = "is 12000x12000 = 144,000,000 pixels, over the limit of 64,000,000 pixels (--max-image-pixels)"
    for url, name in [
        ("data:image/png;base64," + base64.b64encode(bomb).decode(), "image data"),
        (str(path), f"image '{path}'"),
    ]:
        status, body = api(CHAT, _message([image(url)]))
        assert status == 400
        assert (
            body["error"]["message"]
            == f"messages[0].content[0]: {name} {over}; raise --max-image-pixels to load it"
        )


def test_a_huge_bad_value_is_shown_shortened_in_the_error(api):
    status, body = api(CHAT, {**_message("hi"), "temperature": [0] * 100_000})
    assert status == 400
    assert body["error"]["message"] == "'temperature' must be a finite number, got [0, 0, 0, 0, 0, 0, ...]"


def test_unknown_routes_and_wrong_methods(api):
    status, body = api("/v1/completions", {"prompt": "hi"})
    assert status == 404 and "unknown route POST /v1/completions" in body["error"]["message"]
    assert body["error"]["code"] == "unknown_url"
    status, body = api(CHAT)
    assert status == 405 and "takes POST, not GET" in body["error"]["message"]


def test_internal_errors_are_500_with_the_message(api, server, monkeypatch):
    def broken(prompts, params):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(server.engine.backend, "generate", broken)
    status, body = api(CHAT, _message("hi"))
    assert status == 500
    assert body["error"]["type"] == "server_error" and "decoder exploded" in body["error"]["message"]
    monkeypatch.undo()
    assert api(CHAT, _message("hi"))[0] == 200


def test_cli_serve_reports_a_missing_model_folder(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "missing' does not exist" in capsys.readouterr().err
