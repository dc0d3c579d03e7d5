"""Loading configs: schema defaults <- one YAML file <- command-line overrides, then validation.

Each layer is flattened to {dotted key: value} (see `vlrl.config.keys`). A later layer replaces
single leaves, and each leaf remembers which file or override set it, so that an error names it.

`???` (`MISSING`) stands for a required value not filled in yet: `config_template` writes it where
the defaults have none, and `load_config` refuses a config that still holds one, naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from vlrl.config.errors import BadKey, ConfigError, describe, dotted, join_key
from vlrl.config.keys import flatten, required_keys, resolve_paths, section_type, set_dotted
from vlrl.config.schema import TrainConfig

C = TypeVar("C", bound=BaseModel)

# OmegaConf's spelling of "required, no value yet", which YAML reads as a plain string.
MISSING = "???"


def load_config(
    path: str | os.PathLike[str] | None, overrides: Sequence[str] = (), schema: type[C] = TrainConfig
) -> C:
    """Read `path` (None: defaults only), apply `overrides` ('rollout.group_size=8') and validate.

    Override values are parsed as YAML: `8` is an int, `true` a bool, `[a, b]` a list, `null` None;
    quote a string that YAML would read otherwise ('data.system_prompt="Answer: briefly"').
    Stages are checked here by applying each one. Raises ConfigError naming the file or override,
    the dotted key and what is wrong.

    >>> cfg = load_config(None, ["model.path=/ckpt", "data.train=a.jsonl", "rollout.top_k=5"])
    >>> cfg.rollout.top_k, cfg.data.train
    (5, ['a.jsonl'])
    """
    default_source = "defaults" if path is None else str(path)
    tree, values, origins = _merge(path, overrides, schema)
    unfilled = [
        (origins[key], key, f"is required: replace {MISSING} with a value")
        for key, value in values.items()
        if _is_missing(value)
    ]
    if unfilled:
        raise ConfigError(unfilled)
    return _validate_all(schema, tree, origins, default_source)


def config_template(overrides: Sequence[str] = (), schema: type[C] = TrainConfig) -> str:
    """The defaults with `overrides` applied, as YAML, with `???` at each required key that no
    override sets (what `vlrl config` prints without a file). Once every `???` is replaced,
    `load_config` reads the text back as the config it describes.

    >>> template = yaml.safe_load(config_template(["rollout.top_k=5"]))
    >>> template["model"]["path"], template["data"]["train"], template["rollout"]["top_k"]
    ('???', '???', 5)
    """
    tree, values, origins = _merge(None, overrides, schema)
    unset = [key for key in required_keys(schema) if _is_missing(values.get(key, MISSING))]
    for key in unset:
        set_dotted(tree, key, MISSING)  # a string every required field accepts, replaced below
    dumped = _validate_all(schema, tree, origins, "defaults").model_dump(mode="json")
    for key in unset:
        set_dotted(dumped, key, MISSING)
    return yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True)


def _merge(
    path: str | os.PathLike[str] | None, overrides: Sequence[str], schema: type[BaseModel]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The file and overrides as one nested tree, plus its {dotted leaf: value} and {leaf: source}."""
    layers = [] if path is None else [_read_file(Path(path), schema)]
    layers += [_read_override(text, schema) for text in overrides]
    # Empty sections to start from, so that a missing required key is named in full (model.path).
    tree: dict[str, Any] = {name: {} for name, field in schema.model_fields.items() if section_type(field)}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for source, flat in layers:
        for key, value in flat.items():
            set_dotted(tree, key, value)
            values[key], origins[key] = value, source
    return tree, values, origins


def _validate_all(schema: type[C], tree: dict[str, Any], origins: dict[str, str], default_source: str) -> C:
    """The validated config, every stage of it checked by applying it."""
    cfg = _validate(schema, tree, lambda key: _origin(key, origins, default_source))
    if isinstance(cfg, TrainConfig):
        for index in range(len(cfg.stages)):
            _apply_stage(cfg, index, origins.get("stages", default_source))
    return cfg


def _is_missing(value: Any) -> bool:
    return value == MISSING or value == [MISSING]


def dump_config(cfg: BaseModel) -> str:
    """The config as YAML, for runs to save what they ran with; `load_config` reads it back equal."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def apply_stage(cfg: TrainConfig, stage: int | Mapping[str, Any]) -> TrainConfig:
    """The config of one stage: `cfg` with the stage's overrides applied and validated.

    `stage` is an index into `cfg.stages` (errors then name `stages[i].key`) or a stage mapping.
    The result describes that stage alone, so its `stages` is empty.
    """
    return _apply_stage(cfg, stage, "apply_stage")


def _apply_stage(cfg: TrainConfig, stage: int | Mapping[str, Any], source: str) -> TrainConfig:
    key = f"stages[{stage}]" if isinstance(stage, int) else "stage"
    body = cfg.stages[stage] if isinstance(stage, int) else stage
    try:
        overrides = _stage_overrides(body, type(cfg))
    except BadKey as error:
        raise ConfigError([(source, join_key(key, error.key), error.problem)]) from None
    tree = cfg.model_dump()
    tree["stages"] = []
    for name, value in overrides.items():
        set_dotted(tree, name, value)
    return _validate(type(cfg), tree, lambda _: source, key)


def _stage_overrides(stage: Mapping[str, Any], schema: type[BaseModel]) -> dict[str, Any]:
    """A stage's overrides as flat dotted keys: `name` is a label, `steps` shorthand for train.steps."""
    if not isinstance(stage.get("name", ""), str):
        raise BadKey("name", "must be a string")
    body = {key: value for key, value in stage.items() if key not in ("name", "steps")}
    if "stages" in body:
        raise BadKey("stages", "a stage cannot contain stages")
    if "steps" in stage:
        body["train.steps"] = stage["steps"]
    return flatten(body, schema)


def _normalize_stage(stage: Any, index: int, schema: type[BaseModel], folder: Path) -> Any:
    """A stage as its name plus flat overrides, with relative paths resolved where it was written."""
    if not isinstance(stage, Mapping):
        return stage  # validation reports it as stages[i]
    try:
        overrides = resolve_paths(_stage_overrides(stage, schema), schema, folder)
    except BadKey as error:
        raise BadKey(join_key(f"stages[{index}]", error.key), error.problem) from None
    return {"name": stage["name"], **overrides} if "name" in stage else overrides


def _flatten_layer(
    tree: Mapping[str, Any], schema: type[BaseModel], source: str, folder: Path
) -> dict[str, Any]:
    """One file or override as flat leaves, with `./` paths joined onto `folder`."""
    try:
        flat = resolve_paths(flatten(tree, schema), schema, folder)
        stages = flat.get("stages")
        if isinstance(stages, list):
            flat["stages"] = [
                _normalize_stage(stage, index, schema, folder) for index, stage in enumerate(stages)
            ]
    except BadKey as error:
        raise ConfigError([(source, error.key, error.problem)]) from None
    return flat


def _read_file(path: Path, schema: type[BaseModel]) -> tuple[str, dict[str, Any]]:
    source = str(path)
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError([(source, "", f"invalid YAML: {_one_line(error)}")]) from None
    if tree is None:
        tree = {}  # an empty file means all defaults
    if not isinstance(tree, dict):
        raise ConfigError([(source, "", "expected a mapping of sections at the top level")])
    return source, _flatten_layer(tree, schema, source, path.parent)


def _read_override(text: str, schema: type[BaseModel]) -> tuple[str, dict[str, Any]]:
    source = f"override {text!r}"
    key, equals, value_text = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise ConfigError([(source, "", "expected key.sub=value")])
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError as error:
        raise ConfigError([(source, key, f"value is not valid YAML: {_one_line(error)}")]) from None
    # Paths typed on the command line are relative to where the command runs.
    return source, _flatten_layer({key: value}, schema, source, Path.cwd())


def _validate(schema: type[C], tree: dict[str, Any], origin: Callable[[str], str], prefix: str = "") -> C:
    """`schema.model_validate(tree)`, its errors turned into one ConfigError line each."""
    try:
        return schema.model_validate(tree)
    except ValidationError as error:
        problems = []
        for detail in error.errors():
            key = dotted(detail["loc"])
            problems.append((origin(key), join_key(prefix, key), describe(detail)))
        raise ConfigError(problems) from None


def _origin(key: str, origins: Mapping[str, str], default: str) -> str:
    """Which file or override set the leaf that `key` (maybe 'data.train[1]') falls under."""
    for leaf, source in origins.items():
        if key == leaf or key.startswith((f"{leaf}.", f"{leaf}[")):
            return source
    return default


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
