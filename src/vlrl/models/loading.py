"""Load a checkpoint folder (a downloaded Qwen2.5-VL-7B-Instruct or a vlrl tiny model).

Only transformers' own classes are used: `AutoConfig`, `AutoModelForImageTextToText`, and
`AutoProcessor` where torchvision works. Without torchvision, the family's image-only processor
is built from the same files (see `vlrl.models.processors`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    PretrainedConfig,
    PreTrainedModel,
)

from vlrl.data.images import DEFAULT_MAX_PIXELS
from vlrl.models.adapters import ModelAdapter, adapter_for
from vlrl.models.processors import IMAGE_ONLY_PROCESSORS, torchvision_usable

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str, setting: str = "train.device") -> torch.device:
    """The torch device `name` (auto, cpu, cuda, cuda:N); `setting` is where the user chose it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        # Otherwise the first tensor moved there fails deep inside torch with no hint of the setting.
        raise ValueError(f"{setting}={name}: CUDA is not available on this machine; use cpu or auto")
    return torch.device(name)


@dataclass
class LoadedModel:
    model: PreTrainedModel
    processor: object
    adapter: ModelAdapter


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"model folder '{path}' does not exist (model.path)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"'{path}' has no config.json: not a Hugging Face checkpoint folder (model.path). "
            "Build a tiny one with `vlrl tiny-model --family qwen2_vl --out DIR`."
        )


def load_processor(path: str | Path, config=None):
    """The checkpoint's processor; the image-only variant when torchvision is unusable.

    Refuses (ValueError) anything without an image processor: `AutoProcessor` silently returns a
    bare tokenizer when it does not know the saved processor class, and a tokenizer would fail
    only later, at the first image, far from the cause.
    """
    path = Path(path)
    config = config or AutoConfig.from_pretrained(path)
    if torchvision_usable():
        processor = AutoProcessor.from_pretrained(path)
    else:
        processor_class = IMAGE_ONLY_PROCESSORS.get(type(config))
        if processor_class is None:
            raise RuntimeError(
                f"'{path}': the {config.model_type} processor needs torchvision (its video processor), which is "
                "not usable here, and vlrl has no image-only processor for this family: install a torchvision "
                "matching your torch, or add an image-only subclass to vlrl.models.processors"
            )
        processor = processor_class.from_pretrained(path)
    if getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"'{path}' has no usable image processor: AutoProcessor returned a bare "
            f"{type(processor).__name__} ({_saved_processor_class(path)}); copy the processor files of "
            "the model it was trained from into the folder, or install torchvision"
        )
    return processor


def _saved_processor_class(path: Path) -> str:
    """What the folder's processor_config.json asks for, in words, for error messages."""
    file = path / "processor_config.json"
    if not file.is_file():
        return "the folder has no processor_config.json"
    name = json.loads(file.read_text()).get("processor_class")
    return (
        f"processor_config.json names {name}, which transformers does not know"
        if name
        else ("processor_config.json names no processor_class")
    )


def _config_tree(config: PretrainedConfig):
    """`config` and its sub-configs, recursively (a VLM's text_config, vision_config, ...)."""
    yield config
    for key in config.sub_configs:
        sub = getattr(config, key, None)
        if sub is not None:
            yield from _config_tree(sub)


def configure_router(config: PretrainedConfig, router_aux_loss_coef: float) -> bool:
    """Write the load-balancing coefficient into every (sub-)config that has the field, and turn
    the config's `output_router_logits` off; True if the model has routers' logits to give.

    Each MoE family keeps the fields where its language model reads them (text_config for
    Qwen3-VL-MoE, Qwen3.5-MoE, GLM-4.xV-MoE and InternVL's Qwen3-MoE), so every config that
    has them is set rather than naming a place per family. The logits are asked for per call,
    by the policy's update passes only (`vlrl.models.policy`), never through the config: recorded
    router logits are one [tokens, experts] tensor per layer kept for nothing elsewhere, and
    transformers' load-balancing loss fails in a decoding step (its attention mask spans the
    cache, the logits only the new token).
    """
    found = False
    for c in _config_tree(config):
        if hasattr(c, "router_aux_loss_coef"):
            c.router_aux_loss_coef = router_aux_loss_coef
        if hasattr(c, "output_router_logits"):
            c.output_router_logits = False
            found = True
    if router_aux_loss_coef > 0 and not found:
        raise ValueError(
            f"model.router_aux_loss_coef={router_aux_loss_coef}: {config.model_type} has no router "
            "load-balancing loss in transformers (no output_router_logits in its config: a dense "
            "model, or an MoE such as aria that computes none); set model.router_aux_loss_coef=0"
        )
    return found


def set_experts_kernel(model: PreTrainedModel, kernel: str | None) -> None:
    """Run every Mixture-of-Experts layer of `model` with `kernel` (grouped_mm, batched_mm, eager);
    None keeps transformers' default, and a dense model is left as it is.

    Set per sub-model after loading rather than as `from_pretrained(experts_implementation=...)`:
    transformers checks that argument against every model class it builds, and an outer class
    without experts of its own (InternVL around a Qwen3-MoE language model, or any dense model)
    refuses grouped_mm. The per-sub-config form of `set_experts_implementation` sets the kernel on
    the sub-models whose experts can take it, and on the outer model only where its class can.
    """
    if kernel is None:
        return
    wanted = dict.fromkeys(model.config.sub_configs, kernel)
    if type(model)._can_set_experts_implementation():
        wanted[""] = kernel
    model.set_experts_implementation(wanted)


def router_in_float32(model: nn.Module, adapter: ModelAdapter) -> int:
    """Keep every MoE router of `model` (`adapter.routers`) in float32 and compute its logits in
    float32 (model.router_dtype float32); returns the number of routers (0 for a dense model).

    transformers' Qwen3-MoE family and Aria routers compute `F.linear(hidden, weight)` in the
    model's dtype. Here their weights (and GLM-4.5V's e_score_correction_bias, already float32 in
    transformers) are cast to float32 once, and hooks on each router instance cast its input up
    and switch autocast off for its forward only: the logits are then exactly the float32 product
    of the (bfloat16) hidden states and the float32 weights, and the routing weights come out in
    float32 too (the experts multiply them in and cast the sum back, as they do for GLM-4.5V's).
    The weights start as the checkpoint's values in model.dtype (bfloat16 on the Hub anyway) and
    from then on keep their updates in float32. Under FSDP2 with distributed.param_dtype set, the
    router computes in that dtype: the input follows the weight the sharding gathers.
    """
    routers = adapter.routers(model)
    for _, router in routers:
        router.float()
        router.register_forward_pre_hook(_router_input_up, with_kwargs=True)
        router.register_forward_hook(_router_done, always_call=True)
    return len(routers)


def _router_input_up(module: nn.Module, args: tuple, kwargs: dict):
    # Autocast would cast the float32 inputs and weights back down inside F.linear.
    context = torch.autocast(args[0].device.type, enabled=False)
    context.__enter__()
    module._vlrl_autocast_off = context  # left by the forward hook, even when the forward raises
    dtype = module.weight.dtype
    return (args[0].to(dtype), *args[1:]), kwargs


def _router_done(module: nn.Module, args: tuple, output):
    context = module.__dict__.pop("_vlrl_autocast_off", None)
    if context is not None:
        context.__exit__(None, None, None)


def load_model(
    path: str | Path,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    device: str | torch.device = "cpu",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    experts_implementation: str | None = None,
    router_aux_loss_coef: float = 0.0,
    router_dtype: str = "float32",
) -> LoadedModel:
    """Model, processor and adapter for a checkpoint folder.

    `experts_implementation`, `router_aux_loss_coef` and `router_dtype` are
    model.experts_implementation, model.router_aux_loss_coef and model.router_dtype
    (`set_experts_kernel`, `configure_router`, `router_in_float32`); dense models ignore them. A reference model keeps the coefficient at 0: it computes no loss.
    """
    path = Path(path)
    _check_folder(path)
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    config = AutoConfig.from_pretrained(path)
    adapter_cls = adapter_for(config)
    configure_router(config, router_aux_loss_coef)
    model = AutoModelForImageTextToText.from_pretrained(
        path, config=config, dtype=DTYPES[dtype], attn_implementation=attn_implementation
    ).to(device)
    set_experts_kernel(model, experts_implementation)
    processor = load_processor(path, config)
    adapter = adapter_cls(
        processor, min_pixels=min_pixels, max_pixels=max_pixels, max_image_pixels=max_image_pixels
    )
    if router_dtype == "float32":
        router_in_float32(model, adapter)
    return LoadedModel(model, processor, adapter)
