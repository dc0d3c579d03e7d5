"""The config reference (docs/config.md, `vlrl config --reference`), generated from the schemas.

Every key of `TrainConfig` and `SFTConfig` with its type, bounds, default and description, so
that the documentation is the field descriptions themselves and cannot drift from the code.
"""

from __future__ import annotations

import inspect
import json
import types
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from vlrl.config.keys import section_type
from vlrl.config.loader import MISSING
from vlrl.config.schema import SFTConfig, TrainConfig
from vlrl.config.sections import PATH_RULE, is_path_field

REFRESH_COMMAND = "vlrl config --reference > docs/config.md"

INTRO = f"""# Config reference

Generated from the schemas in `src/vlrl/config/` by `{REFRESH_COMMAND}`; edit the field
descriptions there, not this file (a test fails when the two differ).

A run's config is built in layers: these defaults, then one YAML file, then `key.sub=value`
overrides on the command line (`vlrl train configs/grpo_tiny.yaml rollout.group_size=4`). An
unknown key or a bad value is an error naming the file or override and the key. `vlrl config
[FILE] [key=value ...]` prints the resolved config; without a file it prints these defaults with
`{MISSING}` at the keys you must set.

Keys of type *path*: a path starting with `./` or `../` is relative to the folder of the YAML
file that sets it (to the working directory for a command-line override); any other relative
path is kept as given.
"""

STAGES = """### `stages`

Each entry of `stages` sets keys of the tables above for one part of the run, dotted
(`rollout.max_new_tokens: 64`) or nested (`rollout: {max_new_tokens: 64}`), anything but `stages`
itself, plus `name` (a label, logged as `stage`) and `steps` (how many optimizer steps the stage
runs, its `train.steps`). Stages run in order, and each is checked as a whole config when the run
loads. From configs/ptst_tiny.yaml:

```yaml
stages:
  - {name: short, steps: 10, rollout.max_new_tokens: 64, rollout.group_size: 16}
  - {name: long, steps: 10, rollout.max_new_tokens: 128, rollout.group_size: 4}
```
"""

# annotated_types constraint -> how the reference writes it.
BOUNDS = {
    annotated_types.Ge: (">=", "ge"),
    annotated_types.Gt: (">", "gt"),
    annotated_types.Le: ("<=", "le"),
    annotated_types.Lt: ("<", "lt"),
}
SCALARS = {str: "str", int: "int", float: "float", bool: "bool", Any: "any"}


def type_text(annotation: Any) -> str:
    """A field type as the reference writes it: `int`, `list[str]`, `one of a, b`, `float or null`.

    >>> type_text(Literal["hf", "vllm"] | None)
    'one of hf, vllm, or null'
    """
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(arg) for arg in args)
    if get_origin(annotation) in (Union, types.UnionType):
        named = [type_text(arg) for arg in args if arg is not type(None)]
        return " or ".join(named) + (", or null" if named[0].startswith("one of") else " or null")
    if args:
        return f"{get_origin(annotation).__name__}[{', '.join(type_text(arg) for arg in args)}]"
    return SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def bounds_text(field: FieldInfo) -> str:
    """A field's numeric bounds, e.g. '>= 0, < 1'; empty when it has none."""
    parts = []
    for item in field.metadata:
        if type(item) in BOUNDS:
            symbol, attribute = BOUNDS[type(item)]
            parts.append(f"{symbol} {getattr(item, attribute)}")
    return ", ".join(parts)


def default_text(field: FieldInfo) -> str:
    """The default as YAML flow text (JSON is valid YAML), or 'required' when there is none."""
    if field.is_required():
        return f"**required** (`{MISSING}`)"
    value = to_jsonable_python(field.get_default(call_default_factory=True))
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def key_row(key: str, field: FieldInfo) -> str:
    """One table row: key, type (with bounds, and whether it is a path), default, description."""
    kind = type_text(field.annotation)
    if is_path_field(field):
        kind += " (path)"
    bounds = bounds_text(field)
    if bounds:
        kind += f", {bounds}"
    description = (field.description or "").removesuffix(PATH_RULE)
    return f"| `{key}` | {_cell(kind)} | {_cell(default_text(field))} | {_cell(description)} |"


def _summary(model: type[BaseModel]) -> str:
    return inspect.cleandoc(model.__doc__ or "")


def section_markdown(prefix: str, model: type[BaseModel]) -> list[str]:
    """A section's heading, docstring and table of leaf keys, then its nested sections likewise."""
    lines = [f"### `{prefix}`", "", _summary(model), "", "| key | type | default | description |"]
    lines.append("|---|---|---|---|")
    nested = []
    for name, field in model.model_fields.items():
        section = section_type(field)
        if section is None:
            lines.append(key_row(f"{prefix}.{name}", field))
        else:
            nested.append((f"{prefix}.{name}", section))
    lines.append("")
    for key, section in nested:
        lines += section_markdown(key, section)
    return lines


def schema_markdown(command: str, schema: type[BaseModel], documented: set[type[BaseModel]]) -> list[str]:
    """A schema: its top-level keys, then each section not already in `documented` (which it extends)."""
    lines = [f"## `{command}` ({schema.__name__})", "", _summary(schema), ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    sections = []
    for name, field in schema.model_fields.items():
        section = section_type(field)
        if section is None:
            lines.append(key_row(name, field))
            continue
        where = "as under `vlrl train` above" if section in documented else "see below"
        kind = f"section ({where})"
        lines.append(f"| `{name}` | {kind} | | {_cell(field.description or '')} |")
        if section not in documented:
            sections.append((name, section))
            documented.add(section)
    lines.append("")
    for name, section in sections:
        lines += section_markdown(name, section)
    return lines


def reference_markdown() -> str:
    """The whole reference: the RL schema (`vlrl train`), then what the SFT schema adds."""
    documented: set[type[BaseModel]] = set()
    lines = [INTRO]
    lines += schema_markdown("vlrl train", TrainConfig, documented)
    lines.append(STAGES)
    lines += schema_markdown("vlrl sft", SFTConfig, documented)
    return "\n".join(lines).rstrip("\n") + "\n"
