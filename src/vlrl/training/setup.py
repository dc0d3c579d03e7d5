"""Shared run setup for RL and SFT: model loading, freezing, LoRA, optimizer, data.

Everything family-specific comes from the adapter (module groups, LoRA targets), so the same code
prepares a tiny Qwen2-VL on a laptop and a real InternVL on a GPU.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from vlrl.config.sections import DataSection, ModelSection, TrainSection
from vlrl.data import LoadReport, Sample, load_samples
from vlrl.data.prompts import Template, get_template
from vlrl.distributed.fsdp import shard_model
from vlrl.models.adapters import ModelAdapter
from vlrl.models.loading import LoadedModel, load_model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_model_groups(cfg: ModelSection, adapter: ModelAdapter) -> None:
    """Fail, naming the setting, when a config names a module group the family does not have."""
    adapter.check_groups(cfg.freeze, "model.freeze")
    adapter.check_groups(cfg.group_lr, "model.group_lr")
    if cfg.lora.enabled and cfg.lora.target != ["all"]:
        adapter.check_groups(cfg.lora.target, "model.lora.target")


def lora_config(cfg: ModelSection, model: nn.Module, adapter: ModelAdapter) -> LoraConfig:
    """LoRA on the linear layers and fused expert weights of the targeted, unfrozen groups."""
    wanted = adapter.groups() if cfg.lora.target == ["all"] else cfg.lora.target
    parts = [g for g in wanted if g not in cfg.freeze]
    modules, parameters = adapter.lora_targets(model, parts)
    if not (modules or parameters):
        raise ValueError(
            f"model.lora.target {cfg.lora.target}: no LoRA target in the unfrozen groups {parts} of "
            f"{adapter.family} (frozen by model.freeze: {cfg.freeze})"
        )
    if parameters and cfg.lora.dropout:
        # peft's ParamWrapper (LoRA on a fused parameter) cannot apply dropout to its input.
        raise ValueError(
            f"model.lora.dropout={cfg.lora.dropout}: LoRA on fused expert weights "
            f"({len(parameters)} parameters of {adapter.family}, e.g. {parameters[0]}) needs "
            "model.lora.dropout=0, or leave experts out of model.lora.target"
        )
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=modules,
        target_parameters=parameters or None,
    )


def load_policy(cfg: ModelSection, data: DataSection, device: torch.device, path: str | Path | None = None):
    """The trainable model: loaded, frozen groups fixed, LoRA applied, checkpointing enabled.

    `path` overrides `cfg.path` (resuming loads the checkpoint's weights). A LoRA checkpoint
    folder (with adapter_config.json) is loaded onto the base model it names.
    """
    path = Path(path or cfg.path)
    lora_resume = (path / "adapter_config.json").is_file()
    lm = load_model(
        cfg.path if lora_resume else path,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
        device=device,
        min_pixels=data.image_min_pixels,
        max_pixels=data.image_max_pixels,
        max_image_pixels=data.max_image_pixels,
        experts_implementation=cfg.experts_implementation,
        router_aux_loss_coef=cfg.router_aux_loss_coef,
        router_dtype=cfg.router_dtype,
    )
    check_model_groups(cfg, lm.adapter)
    for group, params in lm.adapter.parameter_groups(lm.model).items():
        for _, p in params:
            p.requires_grad_(group not in cfg.freeze)
    model: nn.Module = lm.model
    if cfg.lora.enabled:
        if lora_resume:
            model = PeftModel.from_pretrained(model, path, is_trainable=True)
        else:
            model = get_peft_model(model, lora_config(cfg, model, lm.adapter))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # Frozen embeddings would otherwise cut the graph at the first checkpointed layer.
        model.enable_input_require_grads()
    return LoadedModel(model, lm.processor, lm.adapter)


def load_reference(cfg, device: torch.device, world) -> nn.Module:
    """A frozen copy of the starting policy (`cfg.model.path`) for the KL term, sharded as the
    policy is in a distributed run."""
    m = cfg.model
    # The policy's experts kernel; the router coefficient stays 0: the reference computes no loss.
    ref = load_model(
        m.path,
        dtype=m.dtype,
        attn_implementation=m.attn_implementation,
        device=device,
        experts_implementation=m.experts_implementation,
        router_dtype=m.router_dtype,
    ).model
    ref.eval().requires_grad_(False)
    if world.distributed:
        d = cfg.distributed
        shard_model(ref, d.param_dtype, d.reduce_dtype, d.cpu_offload)
    return ref


def parameter_table(model: nn.Module, adapter: ModelAdapter) -> str:
    """Trainable and frozen parameter counts per module group, aligned, with a total row; with
    LoRA the adapters count as their group's trainable parameters and the base weights as frozen."""
    rows = []
    for group, params in adapter.parameter_groups(model).items():
        trainable = sum(p.numel() for _, p in params if p.requires_grad)
        rows.append((group, trainable, sum(p.numel() for _, p in params) - trainable))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    cells = [("parameters", "trainable", "frozen")] + [(g, f"{t:,}", f"{f:,}") for g, t, f in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    return "\n".join(
        f"{name:<{widths[0]}}  {trainable:>{widths[1]}}  {frozen:>{widths[2]}}"
        for name, trainable, frozen in cells
    )


def build_optimizer(model: nn.Module, adapter: ModelAdapter, train: TrainSection, group_lr: dict[str, float]):
    """AdamW over trainable parameters; a module group named in `model.group_lr` gets its own rate."""
    adapter.check_groups(group_lr, "model.group_lr")
    groups: dict[float, list[nn.Parameter]] = {}
    for group, params in adapter.parameter_groups(model).items():
        lr = group_lr.get(group, train.lr)
        groups.setdefault(lr, []).extend(p for _, p in params if p.requires_grad)
    param_groups = [{"params": ps, "lr": lr} for lr, ps in groups.items() if ps]
    if not param_groups:
        raise ValueError("nothing to train: every module group is frozen (model.freeze)")
    return torch.optim.AdamW(param_groups, lr=train.lr, weight_decay=train.weight_decay)


def load_data(
    files: list[str], data: DataSection, adapter: ModelAdapter, template: Template
) -> tuple[list[Sample], list[LoadReport]]:
    """Samples of every file, prompt lengths checked in the model's own tokens."""
    samples, reports = [], []
    for file in files:
        loaded, report = load_samples(
            file,
            format=data.format,
            skip_invalid=data.skip_invalid,
            max_prompt_length=data.max_prompt_length,
            prompt_length=lambda s: adapter.prompt_length(s, template),
            max_image_pixels=data.max_image_pixels,
            image_root=data.image_root,
        )
        samples.extend(loaded)
        reports.append(report)
    return samples, reports


def template_for(data: DataSection) -> Template:
    return get_template(data.template, system_prompt=data.system_prompt)
