"""The trained weights in checkpoint layout: the names and tensors `save_pretrained` would write.

transformers 5.x converts some checkpoint layouts when it loads a model and converts them back
when it saves one: MoE experts stored per expert in the files (`experts.3.gate_proj.weight`) are
fused into 3-D parameters in memory (`experts.gate_up_proj` [E, 2I, H]), some keys are renamed
(InternVL's `language_model.model.*` is `model.language_model.*` in memory), and tied weights
are written once. A vLLM engine or a generation server loads the files' names and layouts, so
what is sent to it must be what `save_pretrained` writes, not `state_dict()`:

    for name, tensor in export_weights(model):   # one layer's tensors held at a time
        engine.load(name, tensor)

The conversions are transformers' own (`revert_weight_conversion`, the tied-weight removal of
`save_pretrained`), applied one layer at a time: every conversion transformers defines relates
the tensors of one layer (the experts of layer 3 with each other), so the state dict is grouped
by the first `.<index>.` of each name (`layers.3.`, the vision tower's `blocks.0.`) and each
group converted alone. Peak memory therefore grows by about one layer's full tensors, not one
model's, also under FSDP2, whose shards are gathered one tensor at a time (every rank must
iterate, as each gather is a collective). A peft (LoRA) model exports its merged weights under
the base model's names: the adapters are merged for the duration and unmerged after.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from torch import nn
from transformers.core_model_loading import revert_weight_conversion
from transformers.modeling_utils import remove_tied_weights_from_state_dict

# peft's additions to parameter names: the wrapped layer (`q_proj.base_layer.weight`; a fused expert
# parameter wrapped once per targeted parameter: `experts.base_layer.base_layer.gate_up_proj`) and
# the adapter weights themselves (`q_proj.lora_A.default.weight`).
_PEFT_WRAPPER = re.compile(r"(\.base_layer)+\.")
_PEFT_ADAPTER = re.compile(r"(^|\.)lora_[A-Za-z_]+\.")
# The first module-list index of a name: `model.language_model.layers.3.mlp.x` -> `...layers.3`.
_LAYER = re.compile(r"^(.*?\.\d+)\.")


def export_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, full tensor) for every tensor `model.save_pretrained` would write.

    `model` is a transformers model, possibly wrapped by peft (its merged weights are exported,
    under the base names) and possibly sharded by FSDP2 (DTensors, gathered with `full_tensor()`).
    The tensors may share memory with the model's parameters: copy them before the next update if
    they must outlive it. Conversions are reverted one layer at a time (see the module docstring).
    """
    lora = hasattr(model, "merge_adapter")
    if lora:
        model.merge_adapter()
    try:
        yield from _checkpoint_tensors(model.get_base_model() if lora else model)
    finally:
        if lora:
            model.unmerge_adapter()


def _checkpoint_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    # keep_vars: the parameter objects themselves, so tied weights show up as one object twice.
    state = {
        _PEFT_WRAPPER.sub(".", name): tensor
        for name, tensor in model.state_dict(keep_vars=True).items()
        if not _PEFT_ADAPTER.search(name)
    }
    for name in getattr(model, "_keys_to_ignore_on_save", None) or ():
        state.pop(name, None)
    for name in _tied_duplicates(model, state):
        del state[name]
    for group in _layer_groups(state):
        tensors = {name: _full(state[name]) for name in group}
        yield from revert_weight_conversion(model, tensors).items()
        del tensors


def _tied_duplicates(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """The names `save_pretrained` leaves out as copies of a tied weight (`lm_head.weight` when it is
    the input embedding), decided by transformers' own `remove_tied_weights_from_state_dict`.

    It is given one small stand-in tensor per distinct parameter object rather than the parameters,
    so that it sees the same sharing without reading DTensor shards or peft-wrapped modules."""
    standins: dict[int, torch.Tensor] = {}
    probe = {name: standins.setdefault(id(tensor), torch.empty(1)) for name, tensor in state.items()}
    kept = remove_tied_weights_from_state_dict(probe, model)
    return [name for name in state if name not in kept]


def _layer_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Names grouped by their first module-list index (`layers.3`), in state-dict order; the names
    outside any list (embeddings, final norm, lm_head, connector) form one group."""
    groups: dict[str, list[str]] = {}
    for name in state:
        match = _LAYER.match(name)
        groups.setdefault(match.group(1) if match else "", []).append(name)
    return list(groups.values())


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, detached: a DTensor (FSDP2 shard) is gathered from every rank."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
