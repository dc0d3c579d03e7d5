"""Rollouts from a separately launched generation server (vLLM or SGLang) over HTTP.

For inference on other GPUs or nodes than training (MAYE puts it on a dedicated rank):

    vllm:   VLLM_SERVER_DEV_MODE=1 vllm serve CKPT --logprobs-mode processed_logprobs
    sglang: python -m sglang.launch_server --model-path CKPT
    rollout: {backend: server, server: {url: http://host:8000, kind: vllm, sync_dir: /shared/sync}}

- **vLLM**: `POST /v1/chat/completions` with the prompt's chat messages (images as data URLs),
  `n` = G, the seed, `allowed_token_ids` (no vision placeholder is ever drawn), token ids and
  log-probs returned. The server must run with `--logprobs-mode processed_logprobs`, or its
  log-probs are those before temperature. Weights: written to `rollout.server.sync_dir` after each
  update in checkpoint layout (`vlrl.models.export.export_weights`),
  then `POST /collective_rpc` (`reload_weights` from that folder; dev mode), the caches derived
  from the old weights reset, and the step recorded as the server's weight version.
- **SGLang** (its documented native API; SGLang needs CUDA, so this client is tested against
  recorded answers, not a live server): `POST /generate` with the chat-template text and
  `image_data`, one row per sample, `return_logprob`; a prompt without images goes as the trainer's
  token ids (SGLang would tokenise a bare text with the tokenizer's own special tokens, a BOS or
  none, where the family's processor decides), and the prompt length SGLang reports
  (`meta_info.prompt_tokens`) must be the trainer's. Weights through
  `POST /update_weights_from_disk` with a `weight_version`.

Routes (routing replay, `record_routes`): a vLLM server started with `--enable-return-routed-experts`
puts each choice's routed experts in `routed_experts` (base64 of a `.npy`, [prompt + response - 1,
hidden layers, k]); SGLang started with `--enable-return-routed-experts` and asked per request
(`return_routed_experts`) puts them in `meta_info.routed_experts` (base64 of raw int32, the same
shape flattened). Both index every decoder layer; the trainer keeps the MoE layers, in router order.
Asked to record them, the backend first checks with a one-token request that the server returns
them, and otherwise fails naming the flag to start it with.

Before sampling, the server's weight version is compared with the one the trainer last wrote: a
server that restarted or was updated by someone else stops the run with a clear error instead of
training on samples from other weights. Every request is retried with backoff on connection
errors and 5xx answers (`rollout.server.retries`), each within `rollout.server.timeout_s`.
"""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from vlrl.models.adapters import ModelAdapter
from vlrl.models.batching import Encoded
from vlrl.models.export import export_weights
from vlrl.models.routing import ROUTE_DTYPE
from vlrl.net import RequestFailed, request_json
from vlrl.rollout.base import Completion, RolloutBackend, SamplingParams, register_backend
from vlrl.rollout.common import check_prompt_ids, check_prompt_length, default_stop_ids, token_mask
from vlrl.rollout.sampling import group_seed

if TYPE_CHECKING:
    from vlrl.config import TrainConfig

SERVER_KINDS = ("vllm", "sglang")
ROUTES_FLAG = "--enable-return-routed-experts"  # the same flag for `vllm serve` and SGLang's launch_server
WEIGHTS_FILE = "model.safetensors"


@register_backend("server")
class ServerRolloutBackend(RolloutBackend):
    """Samples from the server at `url`; `sync_dir` (shared with the server) carries the weights."""

    def __init__(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        url: str,
        kind: str = "vllm",
        sync_dir: str | None = None,
        timeout_s: float = 600.0,
        retries: int = 3,
        stop_token_ids: list[int] | None = None,
    ):
        if kind not in SERVER_KINDS:
            raise ValueError(f"rollout.server.kind '{kind}' is not one of {', '.join(SERVER_KINDS)}")
        self.url = url.rstrip("/").removesuffix("/v1")
        self.kind = kind
        self.sync_dir = None if sync_dir is None else Path(sync_dir)
        self.timeout_s = timeout_s
        self.retries = retries
        self.adapter = adapter
        self.tokenizer = adapter.tokenizer
        self.stop_token_ids = (
            default_stop_ids(model, self.tokenizer) if stop_token_ids is None else stop_token_ids
        )
        self.blocked, self.allowed = token_mask(model, adapter)
        self.version: str | None = None  # the weight version this trainer last gave the server
        self.syncs = 0
        self.model_name = self._served_model() if kind == "vllm" else None
        self.router_layers = _router_layers(model, adapter)
        self.hidden_layers = _unwrap_config(model).get_text_config().num_hidden_layers
        self.routes = False

    @classmethod
    def config_options(cls, cfg: TrainConfig) -> dict[str, Any]:
        """`rollout.server.*`."""
        s = cfg.rollout.server
        return {
            "url": s.url,
            "kind": s.kind,
            "sync_dir": s.sync_dir,
            "timeout_s": s.timeout_s,
            "retries": s.retries,
        }

    # ---- HTTP -------------------------------------------------------------------------------------
    def _call(self, route: str, body: dict | None = None) -> dict:
        try:
            return request_json(f"{self.url}{route}", body, self.timeout_s, self.retries, backoff=1.0)
        except RequestFailed as exc:
            hint = {
                "vllm": "VLLM_SERVER_DEV_MODE=1 vllm serve CKPT --logprobs-mode processed_logprobs",
                "sglang": "python -m sglang.launch_server --model-path CKPT",
            }[self.kind]
            raise RequestFailed(
                f"rollout server ({self.kind}, rollout.server.url={self.url}): {exc}. Is it running (`{hint}`)?"
            ) from None

    def _served_model(self) -> str:
        reply = self._call("/v1/models")
        try:
            return reply["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise RequestFailed(
                f"rollout server {self.url}/v1/models lists no model: {str(reply)[:200]}"
            ) from None

    # ---- routes -----------------------------------------------------------------------------------
    def record_routes(self, on: bool) -> bool:
        """Read each token's MoE routes from the server's answers; the server must return them
        (checked here with a one-token request), else this fails naming the flag to start it with."""
        if on:
            if not self.router_layers:
                raise ValueError(f"{self.adapter.family} has no MoE routers: there are no routes to record")
            if self._probe_routes() is None:
                start = {
                    "vllm": f"vllm serve CKPT {ROUTES_FLAG} (vLLM >= 0.32, Model Runner V2)",
                    "sglang": f"python -m sglang.launch_server --model-path CKPT {ROUTES_FLAG}",
                }[self.kind]
                raise RuntimeError(
                    f"rollout server {self.url} ({self.kind}) returns no routed experts, which routing replay R3 "
                    f"replays: restart it with {ROUTES_FLAG} (`{start}`), or use model.routing_replay=R2"
                )
        self.routes = on
        return on

    def _probe_routes(self) -> Any:
        """The routed experts of a one-token request (None when the server leaves them out)."""
        token = self.allowed[0]
        if self.kind == "vllm":
            body = {"model": self.model_name, "prompt": [token, token], "max_tokens": 1, "temperature": 0}
            choices = self._call("/v1/completions", body).get("choices") or [{}]
            return choices[0].get("routed_experts")
        body = {
            "input_ids": [token, token],
            "sampling_params": {"max_new_tokens": 1, "temperature": 0},
            "return_routed_experts": True,
        }
        reply = self._call("/generate", body)
        reply = reply[0] if isinstance(reply, list) else reply
        return (reply.get("meta_info") or {}).get("routed_experts")

    def _routes(self, encoded: str, kind: str, prompt: Encoded, completion: Completion) -> torch.Tensor:
        """[prompt + response - 1, MoE layers, k] int16 from a server's base64 routes."""
        raw = base64.b64decode(encoded)
        n = prompt.length + completion.token_ids.numel() - 1  # the last token is never fed
        if kind == "npy":  # vLLM: a .npy of [tokens, hidden layers, k]
            routes = torch.from_numpy(np.load(io.BytesIO(raw)).astype(np.int64))
        else:  # SGLang: raw int32, [tokens * hidden layers * k]
            flat = torch.from_numpy(np.frombuffer(raw, dtype=np.int32).astype(np.int64))
            if flat.numel() % max(n * self.hidden_layers, 1):
                raise RequestFailed(
                    f"rollout server {self.url}: {flat.numel()} route ids are not {n} tokens x "
                    f"{self.hidden_layers} layers x k"
                )
            routes = flat.view(n, self.hidden_layers, -1)
        if routes.shape[0] != n:
            raise RequestFailed(
                f"rollout server {self.url}: routes for {routes.shape[0]} tokens, expected {n} "
                "(prompt + response - 1)"
            )
        if routes.shape[1] != len(self.router_layers):  # every decoder layer: keep the MoE ones
            if routes.shape[1] <= max(self.router_layers):
                raise RequestFailed(
                    f"rollout server {self.url}: routes of {routes.shape[1]} layers; the model's MoE layers "
                    f"are {self.router_layers}"
                )
            routes = routes[:, self.router_layers]
        # A top-k never picks an expert twice: repeats (all zeros) mean the server did not record
        # that layer (SGLang serves deepseek-vl2-tiny with routers that report no layer index).
        ordered = routes.sort(dim=-1).values
        repeats = (ordered[..., 1:] == ordered[..., :-1]).any(dim=-1).any(dim=0)
        if repeats.any():
            layer = self.router_layers[int(repeats.nonzero()[0])]
            raise RequestFailed(
                f"rollout server {self.url}: the routes of decoder layer {layer} name one expert twice for "
                "a token, so the server did not record that layer's experts; replay cannot use them: "
                "use model.routing_replay=R2 (or off) with this server"
            )
        return routes.to(ROUTE_DTYPE)

    # ---- sampling ---------------------------------------------------------------------------------
    def generate(self, prompts: list[Encoded], params: SamplingParams) -> list[list[Completion]]:
        """`params.group_size` completions per prompt, result[p][g]."""
        self._check_version()
        out = []
        for index, prompt in enumerate(prompts):
            if prompt.source is None:
                raise ValueError(
                    "the server rollout backend needs prompts encoded from chat messages (adapter.encode)"
                )
            seed = None if params.seed is None else group_seed(params.seed, params.first_prompt + index)
            sample = self._vllm_group if self.kind == "vllm" else self._sglang_group
            group = sample(prompt, params, seed, params.first_prompt + index)
            for completion in group:
                self._check_tokens(completion, params.first_prompt + index)
            out.append(group)
        return out

    def _vllm_group(
        self, prompt: Encoded, params: SamplingParams, seed: int | None, index: int
    ) -> list[Completion]:
        body = {
            "model": self.model_name,
            "messages": chat_messages(prompt.source.messages, prompt.source.images),
            "n": params.group_size,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "logprobs": True,
            "top_logprobs": 0,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
            "stop_token_ids": self.stop_token_ids,
            "allowed_token_ids": self.allowed,
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
        }
        if seed is not None:
            body["seed"] = seed
        reply = self._call("/v1/chat/completions", body)
        try:
            if reply.get("prompt_token_ids") is not None:
                check_prompt_ids(prompt, list(reply["prompt_token_ids"]), index)
            choices = sorted(reply["choices"], key=lambda c: c["index"])
            groups = []
            for choice in choices:
                steps = choice["logprobs"]["content"]
                ids = [int(step["token"].removeprefix("token_id:")) for step in steps]
                completion = self._completion(ids, [step["logprob"] for step in steps])
                if self.routes:
                    completion.routes = self._routes(choice["routed_experts"], "npy", prompt, completion)
                groups.append(completion)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RequestFailed(
                f"rollout server {self.url}: unexpected chat completion ({exc}): {str(reply)[:300]}"
            ) from None
        return groups

    def _sglang_group(
        self, prompt: Encoded, params: SamplingParams, seed: int | None, index: int
    ) -> list[Completion]:
        G = params.group_size
        sampling = {
            "max_new_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k or -1,
            "stop_token_ids": self.stop_token_ids,
            "logit_bias": {str(i): -1e9 for i in self.blocked},
            "skip_special_tokens": False,
        }
        body = {
            "sampling_params": [
                sampling | ({} if seed is None else {"sampling_seed": seed + g}) for g in range(G)
            ],
            "return_logprob": True,
        }
        if self.routes:
            body["return_routed_experts"] = True
        if prompt.source.images:
            body["text"] = [prompt.source.text] * G
            body["image_data"] = [[data_url(im) for im in prompt.source.images]] * G
        else:
            body["input_ids"] = [prompt.tokens["input_ids"].tolist()] * G
        reply = self._call("/generate", body)
        try:
            rows = reply if isinstance(reply, list) else [reply]
            groups = []
            for row in rows:
                if row["meta_info"].get("prompt_tokens") is not None:
                    check_prompt_length(prompt, int(row["meta_info"]["prompt_tokens"]), index)
                steps = row["meta_info"]["output_token_logprobs"]
                completion = self._completion([int(s[1]) for s in steps], [float(s[0]) for s in steps])
                if self.routes:
                    completion.routes = self._routes(
                        row["meta_info"]["routed_experts"], "int32", prompt, completion
                    )
                groups.append(completion)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RequestFailed(
                f"rollout server {self.url}: unexpected /generate answer ({exc}): {str(reply)[:300]}"
            ) from None
        if len(groups) != G:
            raise RequestFailed(f"rollout server {self.url}: asked for {G} completions, got {len(groups)}")
        return groups

    def _completion(self, ids: list[int], logprobs: list[float]) -> Completion:
        tokens = torch.tensor(ids, dtype=torch.long)
        stopped = bool(ids) and ids[-1] in self.stop_token_ids
        return Completion(
            token_ids=tokens,
            logprobs=torch.tensor(logprobs, dtype=torch.float32),
            text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            finish_reason="stop" if stopped else "length",
        )

    def _check_tokens(self, completion: Completion, index: int) -> None:
        """A placeholder token in a completion would break the image-token count in training."""
        bad = sorted(set(completion.token_ids.tolist()) & set(self.blocked))
        if bad:
            raise RuntimeError(
                f"rollout server {self.url} sampled blocked token ids {bad[:5]} (vision placeholders or "
                f"padding rows) for prompt {index}: it ignored the token mask sent with the request"
            )

    # ---- weights ----------------------------------------------------------------------------------
    def sync_weights(self, model: nn.Module) -> None:
        """Write `model`'s weights to `sync_dir` and have the server reload them (rank 0 does the
        I/O; every rank takes part in gathering FSDP2 shards and waits for the reload)."""
        if self.sync_dir is None:
            return
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        main = not distributed or torch.distributed.get_rank() == 0
        weights = {}
        for name, tensor in export_weights(model):
            if main:
                weights[name] = tensor.to("cpu", copy=True).contiguous()
        self.syncs += 1
        version = f"vlrl-{os.getpid()}-{self.syncs}"
        if main:
            self._write(model, weights)
            if self.kind == "vllm":
                self._call(
                    "/collective_rpc",
                    {"method": "reload_weights", "kwargs": {"weights_path": str(self.sync_dir)}},
                )
                for route in ("/reset_prefix_cache", "/reset_encoder_cache", "/reset_mm_cache"):
                    self._call(route, {})
                self._call("/update_weight_version", {"new_version": version})
            else:
                reply = self._call(
                    "/update_weights_from_disk", {"model_path": str(self.sync_dir), "weight_version": version}
                )
                if not reply.get("success", False):
                    raise RequestFailed(
                        f"rollout server {self.url} could not load the weights: {reply.get('message')}"
                    )
        if distributed:
            torch.distributed.barrier()
        self.version = version

    def _write(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        """The weights as one safetensors file (written aside, then renamed: a server never reads half
        a file) beside the model's config."""
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.config.save_pretrained(self.sync_dir)
        tmp = self.sync_dir / (WEIGHTS_FILE + ".tmp")
        save_file(weights, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, self.sync_dir / WEIGHTS_FILE)

    def _check_version(self) -> None:
        if self.version is None:
            return
        route = "/weight_info" if self.kind == "vllm" else "/get_weight_version"
        reply = self._call(route)
        served = reply.get("weight_version")
        if served != self.version:
            raise RuntimeError(
                f"rollout server {self.url} holds weight version {served!r}, but the trainer last synced "
                f"{self.version!r}: it was restarted or updated by someone else, so its samples would not "
                "come from the policy being trained"
            )


def _router_layers(model: nn.Module, adapter: ModelAdapter) -> list[int]:
    """The decoder-layer index of each MoE router, in `adapter.routers` order (servers return the
    routes of every decoder layer, dense ones included)."""
    layers = []
    for name, _ in adapter.routers(model):
        found = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
        if found is None:
            raise ValueError(f"routing: router {name!r} is in no numbered decoder layer")
        layers.append(int(found.group(1)))
    return layers


def _unwrap_config(model: nn.Module):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config


def chat_messages(messages: list[dict], images: list[Image.Image]) -> list[dict]:
    """`messages` with each {"type": "image"} part replaced by the next image as a data URL."""
    pending = iter(images)
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_url", "image_url": {"url": data_url(next(pending))}}
                if part.get("type") == "image"
                else part
                for part in content
            ]
        out.append({**message, "content": content})
    return out


def data_url(image: Image.Image) -> str:
    """A PNG data URL of `image` (lossless: the server sees the trainer's exact pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
