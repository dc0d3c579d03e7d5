"""A small OpenAI chat client (standard library only) with retries for flaky servers.

`url` is a server's base URL, given the way OpenAI clients take it (`http://host:8000/v1`), or
without `/v1`, or the full `.../chat/completions` endpoint. Retries are `vlrl.net.request_json`'s:
transient failures (connection errors, timeouts, HTTP 429 and 5xx) are retried with backoff, any
other HTTP error fails at once.
"""

from __future__ import annotations

from vlrl.net.http import RequestFailed, request_json

__all__ = ["RequestFailed", "chat", "endpoint", "list_models", "message_text"]


def endpoint(url: str, route: str) -> str:
    """The full URL of `route` ("chat/completions", "models") under a base or endpoint `url`.

    >>> endpoint("http://h:8000", "models"), endpoint("http://h:8000/v1/chat/completions", "models")
    ('http://h:8000/v1/models', 'http://h:8000/v1/models')
    """
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    if not url.endswith("/v1"):
        url += "/v1"
    return f"{url}/{route}"


def chat(
    url: str,
    model: str,
    messages: list[dict],
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 1.0,
    **params,
) -> str:
    """The assistant's text for `messages` (OpenAI chat format); `params` are sent as they are.

    Makes at most `retries + 1` attempts of `timeout` seconds each.
    """
    target = endpoint(url, "chat/completions")
    reply = request_json(target, {"model": model, "messages": messages, **params}, timeout, retries, backoff)
    return message_text(reply, target)


def message_text(reply: dict, source: str = "server") -> str:
    """The first choice's text of a chat completion, with separately returned reasoning put back.

    Servers that return a reasoning model's thinking apart from its answer (`reasoning_content`
    from the DeepSeek API, `reasoning` from vLLM's reasoning parsers) get it back inside
    `<think>...</think>` before the content, the layout R1 itself writes.

    >>> message_text({"choices": [{"message": {"content": "<answer>2</answer>", "reasoning_content": "1+1"}}]})
    '<think>1+1</think><answer>2</answer>'
    """
    try:
        message = reply["choices"][0]["message"]
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise RequestFailed(f"{source}: reply is not a chat completion: {str(reply)[:300]}") from None
    if reasoning and "<think>" not in content:
        return f"<think>{reasoning}</think>{content}"
    return content


def list_models(url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0) -> list[str]:
    """Ids of the models a server lists at `GET /v1/models`."""
    target = endpoint(url, "models")
    reply = request_json(target, None, timeout, retries, backoff)
    try:
        return [entry["id"] for entry in reply["data"]]
    except (KeyError, TypeError):
        raise RequestFailed(f"{target}: reply is not a model list: {str(reply)[:300]}") from None
