"""Dotted keys over a schema: look-up with "did you mean", flattening, relative-path resolution.

YAML files, command-line overrides and stages are all turned into one flat form, {dotted key: value}
with a key per leaf field, so that unknown keys and relative paths are handled in one place.
A leaf is any field that is not a section: `data.eval` is a leaf holding a whole dict.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from vlrl.config.errors import BadKey
from vlrl.config.sections import is_path_field


def _moved(name: str, model: type[BaseModel]) -> str | None:
    """`vllm.sleep` for `vllm_sleep` when `vllm` is a section of `model` holding `sleep`: the
    flat keys of earlier versions (`rollout.vllm_sleep`) moved into per-backend sections."""
    head, _, rest = name.partition("_")
    field = model.model_fields.get(head)
    section = section_type(field) if field is not None else None
    return f"{head}.{rest}" if section is not None and rest in section.model_fields else None


def section_type(field: FieldInfo) -> type[BaseModel] | None:
    """The section model a field holds, or None for a leaf."""
    kind = field.annotation
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _unknown(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean '{close[0]}'?)"
    return f"unknown key (valid keys: {', '.join(known)})"


def required_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of the leaves that have no default, in schema order.

    >>> from vlrl.config import TrainConfig
    >>> required_keys(TrainConfig)
    ['model.path', 'data.train']
    """
    keys = []
    for name, field in schema.model_fields.items():
        section = section_type(field)
        if section is not None:
            keys += required_keys(section, f"{prefix}{name}.")
        elif field.is_required():
            keys.append(f"{prefix}{name}")
    return keys


def field_at(schema: type[BaseModel], key: str) -> FieldInfo:
    """The field a dotted key names; BadKey names the first part that does not exist."""
    parts = key.split(".")
    model: type[BaseModel] | None = schema
    for i, part in enumerate(parts):
        if model is None:
            raise BadKey(".".join(parts[:i]), "is a value, not a section: set it whole")
        if part not in model.model_fields:
            moved = _moved(part, model)
            problem = (
                f"unknown key (did you mean '{moved}'?)"
                if moved
                else _unknown(part, list(model.model_fields))
            )
            raise BadKey(".".join(parts[: i + 1]), problem)
        field = model.model_fields[part]
        model = section_type(field)
    return field


def flatten(tree: Mapping[str, Any], schema: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """{dotted key of a leaf: value} from nested sections and/or dotted keys.

    >>> from vlrl.config import TrainConfig
    >>> flatten({"rollout": {"top_k": 5}, "model.lora.r": 8}, TrainConfig)
    {'rollout.top_k': 5, 'model.lora.r': 8}
    """
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if section_type(field_at(schema, key)) is None:
            flat[key] = value
        elif isinstance(value, Mapping):
            flat.update(flatten(value, schema, prefix=f"{key}."))
        else:
            raise BadKey(key, f"is a section: give a mapping of its keys, not {value!r}")
    return flat


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree['a']['b'] = value for key 'a.b', creating the sections on the way."""
    *sections, leaf = key.split(".")
    for name in sections:
        tree = tree.setdefault(name, {})
    tree[leaf] = value


def resolve_path(value: Any, folder: Path) -> Any:
    """Join `./` and `../` paths (also inside lists and dict values) onto `folder`; keep the rest.

    Other relative paths are left alone on purpose: `runs/tiny` means the same folder wherever the
    YAML file lives, which is what configs shared between machines want.
    """
    if isinstance(value, str):
        if value.startswith(("./", "../")):
            return os.path.abspath(os.path.join(folder, value))
        return value
    if isinstance(value, list):
        return [resolve_path(item, folder) for item in value]
    if isinstance(value, dict):
        return {name: resolve_path(item, folder) for name, item in value.items()}
    return value


def resolve_paths(flat: dict[str, Any], schema: type[BaseModel], folder: Path) -> dict[str, Any]:
    """`resolve_path` applied to the path fields of a flat config."""
    return {
        key: resolve_path(value, folder) if is_path_field(field_at(schema, key)) else value
        for key, value in flat.items()
    }
