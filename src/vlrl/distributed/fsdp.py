"""FSDP2 (`torch.distributed.fsdp.fully_shard`): sharding, full weights, sharded checkpoints.

Sharding units are the blocks the model itself declares unsplittable (transformers'
`_no_split_modules`: decoder layers and vision blocks), then the root for what is left
(embeddings, norms, the connector). Each unit's parameters are all-gathered for its forward and
backward and freed after, so peak memory is one unit's full weights plus the shards.

Gradients: FSDP2 averages them over ranks, but vlrl's losses are already normalised by the
global batch (token counts and sequence counts gathered from every rank), so the trainers scale
each rank's loss by the world size to get the sum. (Gloo cannot reduce with a divide factor of
1, which would be the other way.)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

SHARDED_DIR = "sharded"


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules to shard one by one: instances of every `_no_split_modules` class of the model
    and its sub-models (a VLM lists its decoder layer and its vision block)."""
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    return [m for m in model.modules() if type(m).__name__ in names]


def odd_dtype_modules(model: nn.Module) -> list[nn.Module]:
    """Modules whose own parameters are of another dtype than most of the model's: MoE routers kept
    in float32 in a bfloat16 model (model.router_dtype). FSDP2 refuses a unit whose parameters mix
    dtypes, so each becomes a unit of its own."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    if len(counts) < 2:
        return []
    common = max(counts, key=counts.get)
    return [m for m in model.modules() if any(p.dtype != common for p in m.parameters(recurse=False))]


def shard_model(
    model: nn.Module, param_dtype: str | None = None, reduce_dtype: str = "float32", cpu_offload: bool = False
) -> nn.Module:
    """Apply FSDP2 to every unit, then to the root; returns the (same, now sharded) model.

    `param_dtype` is the dtype of the gathered weights used in compute (None: the stored dtype);
    `reduce_dtype` that of the gradient reduction. Modules kept in another dtype on purpose (float32
    routers) are units of their own, gathered in their stored dtype whatever `param_dtype` says.
    """
    offload = {"offload_policy": CPUOffloadPolicy()} if cpu_offload else {}
    reduce = getattr(torch, reduce_dtype)
    kwargs = {
        "mp_policy": MixedPrecisionPolicy(
            param_dtype=getattr(torch, param_dtype) if param_dtype else None, reduce_dtype=reduce
        ),
        **offload,
    }
    units = shard_units(model)
    if not units:
        raise ValueError(
            f"{type(model).__name__} declares no _no_split_modules: vlrl cannot tell its layers apart to shard them"
        )
    # Inner units first: FSDP2 shards bottom-up, each unit taking the parameters no inner unit holds.
    for module in odd_dtype_modules(model):
        fully_shard(module, mp_policy=MixedPrecisionPolicy(reduce_dtype=reduce), **offload)
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    return model


def full_state_dict(model: nn.Module, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded weights under the model's own parameter names (a collective: every rank calls).

    With `rank0_only` the other ranks get an empty dict and rank 0 gets CPU tensors, for export.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    return get_model_state_dict(model, options=options)


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Each rank writes its shards of the model and optimizer state (torch.distributed.checkpoint)."""
    import torch.distributed.checkpoint as dcp

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(Path(folder) / SHARDED_DIR))


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore what `save_sharded` wrote, at the same world size, into the sharded model and optimizer."""
    import torch.distributed.checkpoint as dcp

    path = Path(folder) / SHARDED_DIR
    if not path.is_dir():
        raise FileNotFoundError(
            f"'{path}' not found: '{folder}' was not saved by a torchrun job, so its optimizer state is not sharded"
        )
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
