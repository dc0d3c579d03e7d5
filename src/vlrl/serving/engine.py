"""Generation for the chat server: one loaded checkpoint answering chat requests in OpenAI shape."""

from __future__ import annotations

import threading
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path

from vlrl.models.loading import LoadedModel, load_model
from vlrl.rollout import Completion, make_backend
from vlrl.serving.errors import RequestError
from vlrl.serving.protocol import ChatRequest


def cut_at_stop(
    completion: Completion, stop: tuple[str, ...], decode: Callable[[list[int]], str]
) -> tuple[str, int] | None:
    """(text before the first stop string, tokens up to where it appeared), or None without one.

    The rollout backend stops only on stop tokens, so stop strings are applied after generation:
    the token count is what a stop-string-aware decoder would have produced, the shortest prefix
    of the completion whose text contains a stop string.
    """
    hits = [i for i in (completion.text.find(s) for s in stop) if i >= 0]
    if not hits:
        return None
    ids = completion.token_ids.tolist()
    n = 1 + bisect_left(range(1, len(ids) + 1), True, key=lambda k: any(s in decode(ids[:k]) for s in stop))
    return completion.text[: min(hits)], n


class ChatEngine:
    """A loaded checkpoint that answers `ChatRequest`s through the HF rollout backend.

    Requests run one at a time under a lock. Within a request the `n` completions share one
    prefill and decode as one batch of rows (at most `max_batch`); concurrent requests are not
    merged into one batch (continuous batching is future work), so a second client waits.
    """

    def __init__(self, loaded: LoadedModel, name: str, max_batch: int):
        self.adapter = loaded.adapter
        self.tokenizer = loaded.adapter.tokenizer
        self.name = name
        self.max_batch = max_batch
        self.backend = make_backend("hf", loaded.model, loaded.adapter, max_batch_rows=max_batch)
        self.created = int(time.time())
        self.context = getattr(loaded.model.config.get_text_config(), "max_position_embeddings", None)
        self._lock = threading.Lock()

    def model_card(self) -> dict:
        """The served model as `GET /v1/models` lists it."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "vlrl"}

    def complete(self, request: ChatRequest) -> dict:
        """The OpenAI `chat.completion` object answering `request`."""
        self._check_placeholders(request.messages)
        # The tokenizer is used under the lock too: fast tokenizers are not safe to share across threads.
        with self._lock:
            prompt = self.adapter.encode_messages(request.messages, request.images)
            self._check_fits(prompt.length, request.params.max_new_tokens)
            group = self.backend.generate([prompt], request.params)[0]
            choices = [self._choice(i, c, request) for i, c in enumerate(group)]
        completion_tokens = sum(n for _, n in choices)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [choice for choice, _ in choices],
            "usage": {
                "prompt_tokens": prompt.length,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt.length + completion_tokens,
            },
        }

    def _check_placeholders(self, messages: list[dict]) -> None:
        """Refuse text holding a vision placeholder: it would count as an image with no pixels."""
        for i, message in enumerate(messages):
            content = message["content"]
            texts = (
                [content] if isinstance(content, str) else [p["text"] for p in content if p["type"] == "text"]
            )
            for token in self.adapter.placeholder_tokens:
                if any(token in t for t in texts):
                    raise RequestError(
                        f"messages[{i}]: text contains the vision placeholder '{token}'; send images "
                        "as image_url parts",
                        param=f"messages[{i}]",
                    )

    def _check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        if self.context is not None and prompt_tokens + max_tokens > self.context:
            raise RequestError(
                f"prompt ({prompt_tokens} tokens, images included) + max_tokens ({max_tokens}) exceeds "
                f"the model's context of {self.context} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )

    def _choice(self, index: int, completion: Completion, request: ChatRequest) -> tuple[dict, int]:
        """One OpenAI choice and the number of tokens it counts for in `usage`."""
        text, n_tokens, finish = completion.text, len(completion.token_ids), completion.finish_reason
        cut = cut_at_stop(completion, request.stop, self._decode)
        if cut is not None:
            (text, n_tokens), finish = cut, "stop"
        choice = {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": {"content": self._logprobs(completion, n_tokens)} if request.logprobs else None,
            "finish_reason": finish,
        }
        return choice, n_tokens

    def _decode(self, ids: list[int]) -> str:
        """Text as the backend decodes a completion (special tokens dropped)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _logprobs(self, completion: Completion, n_tokens: int) -> list[dict]:
        """OpenAI `logprobs.content`: one entry per counted token, the end-of-turn token included.

        Every generated token has its entry, so the entries sum to the sequence log-prob; the
        values are the backend's behaviour log-probs, log_softmax(logits / temperature).
        `top_logprobs` stays empty: alternatives are not computed.
        """
        ids = completion.token_ids[:n_tokens].tolist()
        values = completion.logprobs[:n_tokens].tolist()
        entries = []
        for token_id, logprob in zip(ids, values, strict=True):
            token = self.tokenizer.decode([token_id])
            entries.append(
                {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}
            )
        return entries


def load_engine(
    model_dir: str | Path,
    max_batch: int = 8,
    served_model_name: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> ChatEngine:
    """A `ChatEngine` for a checkpoint folder; the model is served as the folder's name by default."""
    if max_batch < 1:
        raise ValueError(f"--max-batch must be at least 1, got {max_batch}")
    loaded = load_model(model_dir, dtype=dtype, device=device)
    return ChatEngine(loaded, served_model_name or Path(model_dir).resolve().name, max_batch)
