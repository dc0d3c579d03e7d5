"""JSON over HTTP with retries, for every part of vlrl that talks to a server.

The cold-start pipeline (an OpenAI chat client) and the `server` rollout backend (vLLM / SGLang
endpoints) both send JSON and read JSON back from servers that may be restarting or overloaded.
Connection errors, timeouts, HTTP 429 and HTTP 5xx are retried with exponential backoff and
jitter (a `Retry-After` header, when a server sends one, is waited at least); any other HTTP error
fails at once, since sending the same request again would get the same answer.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.request

MAX_BACKOFF_S = 60.0


class RequestFailed(RuntimeError):
    """A request that failed for good; the message names the URL and the last error."""


def request_json(url: str, body: dict | None, timeout: float, retries: int, backoff: float) -> dict:
    """GET (`body` None) or POST JSON to `url` and decode the JSON reply, retrying transient failures."""
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}: {_error_message(exc)}"
            if not (exc.code == 429 or exc.code >= 500):
                raise RequestFailed(f"{url}: {error}") from None
            wait = max(backoff_delay(attempt, backoff), _retry_after(exc))
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, cut short
            error, wait = f"{type(exc).__name__}: {exc}", backoff_delay(attempt, backoff)
        else:
            if not raw.strip():  # control endpoints (a cache reset) may answer 200 with no body
                return {}
            try:
                return json.loads(raw)
            except ValueError as exc:  # a 200 whose body is not JSON: asking again will not fix it
                raise RequestFailed(f"{url}: reply is not JSON ({exc})") from None
        if attempt < retries:
            time.sleep(wait)
    raise RequestFailed(f"{url}: failed after {retries + 1} attempts; last error: {error}")


def backoff_delay(attempt: int, base: float) -> float:
    """Seconds to wait before retry `attempt + 1`: base * 2**attempt, capped, times a jitter in [0.5, 1).

    The jitter spreads the retries of concurrent workers, which would otherwise hit a recovering
    server all at the same moment.
    """
    return min(MAX_BACKOFF_S, base * 2**attempt) * random.uniform(0.5, 1.0)


def _retry_after(exc: urllib.error.HTTPError) -> float:
    """The `Retry-After` seconds of a reply (0 without one, or for the HTTP-date form)."""
    value = exc.headers.get("Retry-After", "") if exc.headers else ""
    try:
        return min(MAX_BACKOFF_S, max(0.0, float(value)))
    except ValueError:
        return 0.0


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The server's error message: OpenAI's `{"error": {"message"}}`, else the start of the body."""
    try:
        text = exc.read().decode(errors="replace")
    except OSError:
        return exc.reason or ""
    try:
        return json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return text[:300]
