"""OpenAI chat-completion requests, validated and turned into chat-template messages and images.

A request's messages become the model-independent form `vlrl.data.prompts.build_messages`
produces (content: a string, or `{"type": "image"}` / `{"type": "text"}` parts in reading order),
so the model's own chat template places the images, as it does for training samples. All turns
are kept: a multi-turn conversation is rendered whole by the chat template.
"""

from __future__ import annotations

import reprlib
import sys
from dataclasses import dataclass

from PIL import Image

from vlrl.rollout import SamplingParams
from vlrl.serving.errors import RequestError
from vlrl.serving.images import ImageSource

# OpenAI role -> chat-template role ("developer" is the newer name of "system").
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# Parameters that change what the client gets back; ignoring them would answer a different request.
UNSUPPORTED = (
    "stream",
    "tools",
    "functions",
    "response_format",
    "logit_bias",
    "top_logprobs",
    "frequency_penalty",
    "presence_penalty",
)

# Below this a positive temperature overflows float32 logits / T to inf and the log-probs sent
# back to NaN; it decodes greedily anyway (vLLM treats temperatures under 1e-5 as 0).
MIN_TEMPERATURE = 1e-5

# Without max_tokens a random or base model could decode up to its whole context; clients should
# always send it, as OpenAI's own docs advise for reasoning models.
DEFAULT_MAX_TOKENS = 1024


@dataclass
class ChatRequest:
    """A validated chat request.

    `messages` are chat-template messages and `images` the decoded images of their image parts,
    in order; `params.group_size` is the request's `n`. `stop` strings cut the text after
    generation; `logprobs` asks for per-token log-probs.
    """

    messages: list[dict]
    images: list[Image.Image]
    params: SamplingParams
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    model: str | None = None


def parse_chat_request(body: object, max_batch: int, source: ImageSource) -> ChatRequest:
    """Check a decoded JSON body and build the `ChatRequest`, its images taken from `source`; a
    `RequestError` names the bad field."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False, 0, [], {}):
            raise RequestError(
                f"'{name}' is not supported by this server", param=name, code="unsupported_parameter"
            )
    messages, images = parse_messages(body.get("messages"), source)
    n = _integer(body, "n", 1)
    if n > max_batch:
        raise RequestError(f"n={n} exceeds the server's --max-batch {max_batch}", param="n")
    limit_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    temperature = _number(body, "temperature", 1.0)
    if 0 < temperature < MIN_TEMPERATURE:
        raise RequestError(
            f"'temperature' must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {temperature}",
            param="temperature",
        )
    try:
        params = SamplingParams(
            group_size=n,
            max_new_tokens=_integer(body, limit_name, DEFAULT_MAX_TOKENS),
            temperature=temperature,
            top_p=_number(body, "top_p", 1.0),
            seed=_integer(body, "seed", None, minimum=None),
        )
    except ValueError as exc:  # a value out of range; the message names the parameter
        raise RequestError(str(exc)) from None
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", param="model")
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise RequestError("'logprobs' must be true or false", param="logprobs")
    return ChatRequest(messages, images, params, _stop(body.get("stop")), bool(logprobs), model)


def parse_messages(raw: object, source: ImageSource) -> tuple[list[dict], list[Image.Image]]:
    """OpenAI messages -> (chat-template messages, images in the order of their parts)."""
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", param="messages")
    messages: list[dict] = []
    images: list[Image.Image] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object with 'role' and 'content'", param=where)
        if not isinstance(message.get("role"), str) or message["role"] not in ROLES:  # a list is unhashable
            raise RequestError(
                f"{where}: role {reprlib.repr(message.get('role'))} is not one of {', '.join(ROLES)}",
                param=where,
            )
        content = message.get("content")
        if isinstance(content, list):
            content = [_part(part, f"{where}.content[{j}]", images, source) for j, part in enumerate(content)]
        elif not isinstance(content, str):
            raise RequestError(f"{where}: content must be a string or a list of parts", param=where)
        messages.append({"role": ROLES[message["role"]], "content": content})
    return messages, images


def _part(part: object, where: str, images: list[Image.Image], source: ImageSource) -> dict:
    """One content part in template form; an image part's image is decoded and appended to `images`."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "image_url":
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref  # some clients send the URL bare
        if not isinstance(url, str):
            raise RequestError(f"{where}: image_url needs a 'url' string", param=where)
        images.append(source.open(url, where))
        return {"type": "image"}
    raise RequestError(
        f"{where}: a part must be {{'type': 'text', 'text': str}} or {{'type': 'image_url', "
        f"'image_url': {{'url': str}}}}; got type {kind!r}",
        param=where,
    )


def _integer(body: dict, name: str, default: int | None, minimum: int | None = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise RequestError(f"'{name}' must be an integer{bound}, got {reprlib.repr(value)}", param=name)
    return value


def _number(body: dict, name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    # Python's json reads NaN, Infinity and 1e999 (as inf); the bound refuses them and integers
    # float() cannot hold (an int-float comparison is exact, NaN compares false).
    if not isinstance(value, int | float) or isinstance(value, bool) or not abs(value) <= sys.float_info.max:
        raise RequestError(f"'{name}' must be a finite number, got {reprlib.repr(value)}", param=name)
    return float(value)


def _stop(value: object) -> tuple[str, ...]:
    """`stop` as OpenAI allows it: absent, one string, or a list of strings (none empty)."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("'stop' must be a non-empty string or a list of them", param="stop")
    return tuple(stops)
