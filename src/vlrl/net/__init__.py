"""Talking to servers: JSON over HTTP with retries (used by the cold-start client and the server rollout backend)."""

from vlrl.net.http import RequestFailed, backoff_delay, request_json

__all__ = ["RequestFailed", "backoff_delay", "request_json"]
