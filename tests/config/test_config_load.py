"""Loading configs: defaults, YAML files, typed overrides, readable errors, dump round-trip."""

import pytest
from pydantic import ValidationError

from vlrl.config import ConfigError, SFTConfig, TrainConfig, dump_config, load_config

REQUIRED = ["model.path=/ckpt", "data.train=train.jsonl"]


def test_defaults_need_only_the_required_keys():
    cfg = load_config(None, REQUIRED)
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.path == "/ckpt"
    assert cfg.data.train == ["train.jsonl"]  # one string stands for a one-item list
    assert cfg.rollout.group_size == 8
    assert cfg.reward.functions == ["format", "accuracy"]
    assert cfg.model.lora.r == 16


def test_missing_required_keys_are_named_in_full():
    with pytest.raises(ConfigError) as info:
        load_config(None)
    assert str(info.value).splitlines() == [
        "defaults: model.path: Field required",
        "defaults: data.train: Field required",
    ]


def test_yaml_file_sets_values_and_resolves_dot_paths_against_its_folder(write_yaml):
    path = write_yaml(
        """
model: {path: ./ckpt}
data:
  train: [../a.jsonl, b.jsonl]
  eval: {held: ./h.jsonl}
reward:
  functions: [format, ./mine.py:score]
rollout:
  group_size: 4
""",
        name="sub/run.yaml",
    )
    cfg = load_config(path)
    folder = path.parent
    assert cfg.model.path == str(folder / "ckpt")
    assert cfg.data.train == [str(folder.parent / "a.jsonl"), "b.jsonl"]  # plain relative: kept
    assert cfg.data.eval == {"held": str(folder / "h.jsonl")}
    assert cfg.reward.functions == ["format", f"{folder / 'mine.py'}:score"]
    assert cfg.rollout.group_size == 4


@pytest.mark.parametrize(
    ("override", "section", "key", "expected"),
    [
        ("rollout.group_size=16", "rollout", "group_size", 16),
        ("train.lr=3.0e-6", "train", "lr", 3.0e-6),
        ("train.lr=1e-6", "train", "lr", 1e-6),  # YAML reads 1e-6 as a string; the float field parses it
        ("model.freeze=[vision]", "model", "freeze", ["vision"]),
        ("reward.functions=[format, length]", "reward", "functions", ["format", "length"]),
        ("data.eval={a: x.jsonl}", "data", "eval", {"a": "x.jsonl"}),
    ],
)
def test_override_values_are_typed(override, section, key, expected):
    value = getattr(getattr(load_config(None, [*REQUIRED, override]), section), key)
    assert value == expected
    assert type(value) is type(expected)  # True == 1, so compare the types too


def test_null_override_gives_none_and_later_overrides_win():
    cfg = load_config(None, [*REQUIRED, "data.system_prompt=hi", "data.system_prompt=null"])
    assert cfg.data.system_prompt is None


def test_overrides_apply_after_the_yaml_file(write_yaml):
    path = write_yaml("model: {path: m}\ndata: {train: t.jsonl}\nrollout: {group_size: 4, top_k: 5}\n")
    cfg = load_config(path, ["rollout.group_size=2", "model.lora={enabled: true}"])
    assert (cfg.rollout.group_size, cfg.rollout.top_k) == (2, 5)
    assert cfg.model.lora.enabled and cfg.model.lora.r == 16  # a section override sets only its keys


def test_override_dot_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["model.path=./m", "data.train=t.jsonl"])
    assert cfg.model.path == str(tmp_path / "m")


def test_unknown_yaml_key_names_file_key_and_close_name(write_yaml):
    path = write_yaml("model: {path: m}\ndata: {train: t.jsonl}\nrollout:\n  group_sise: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: rollout.group_sise: unknown key (did you mean 'group_size'?)"


def test_unknown_section_is_named_at_the_first_wrong_part(write_yaml):
    path = write_yaml("rollot:\n  group_size: 4\n")
    with pytest.raises(ConfigError, match=r"rollot: unknown key \(did you mean 'rollout'\?\)"):
        load_config(path)


def test_unknown_key_without_close_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"logging\.zzz: unknown key \(valid keys: jsonl, tensorboard"):
        load_config(None, [*REQUIRED, "logging.zzz=1"])


def test_unknown_override_key():
    with pytest.raises(ConfigError) as info:
        load_config(None, [*REQUIRED, "rollout.group_sise=8"])
    assert str(info.value) == (
        "override 'rollout.group_sise=8': rollout.group_sise: unknown key (did you mean 'group_size'?)"
    )


@pytest.mark.parametrize("override", ["rollout.group_size", "=3", "data.eval.held=x.jsonl", "model.lora=3"])
def test_malformed_overrides_are_errors(override):
    with pytest.raises(ConfigError, match=f"override '{override}'"):
        load_config(None, [*REQUIRED, override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.group_size=-1", "rollout.group_size: Input should be greater than or equal to 1 (got -1)"),
        ("rollout.group_size=abc", "rollout.group_size: Input should be a valid integer"),
        ("rollout.top_p=0", "rollout.top_p: Input should be greater than 0 (got 0)"),
        ("model.dtype=fp8", "model.dtype: Input should be 'float32', 'bfloat16' or 'float16' (got 'fp8')"),
        ("data.train=[a.jsonl, 3]", "data.train[1]: Input should be a valid string (got 3)"),
    ],
)
def test_bad_override_values_name_the_override_and_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [*REQUIRED, override])
    assert str(info.value).startswith(f"override '{override}': {message}")


def test_bad_yaml_value_names_the_file(write_yaml):
    path = write_yaml("model: {path: m}\ndata: {train: t.jsonl}\nrollout: {top_p: 1.5}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: rollout.top_p: Input should be less than or equal to 1 (got 1.5)"


def test_weights_must_match_functions():
    with pytest.raises(ConfigError) as info:
        load_config(None, [*REQUIRED, "reward.weights=[1.0]"])
    assert "reward.weights: has 1 entries but reward.functions has 2" in str(info.value)
    cfg = load_config(None, [*REQUIRED, "reward.functions=[format]", "reward.weights=[0.5]"])
    assert cfg.reward.weights == [0.5]


def test_cross_field_error_names_the_key_to_fix():
    with pytest.raises(ConfigError) as info:
        load_config(None, [*REQUIRED, "rollout.backend=server"])
    # rollout.server.url was set by no file or override, so the error is charged to the defaults.
    assert str(info.value) == "defaults: rollout.server.url: is required when rollout.backend is server"


def test_a_learning_rate_for_a_frozen_group_is_an_error():
    with pytest.raises(
        ConfigError, match="model.group_lr: sets a learning rate for vision, which model.freeze keeps fixed"
    ):
        load_config(None, [*REQUIRED, "model.freeze=[vision]", "model.group_lr={vision: 1e-5}"])


def test_sft_stop_without_evaluations_is_an_error():
    args = [*REQUIRED, "sft.stop_at_acc=0.3"]
    with pytest.raises(ConfigError, match="sft.stop_at_acc: needs evaluations to check"):
        load_config(None, args, schema=SFTConfig)
    with pytest.raises(ConfigError, match="sft.stop_at_acc: needs evaluations to check"):
        load_config(None, [*args, "train.eval_every=5"], schema=SFTConfig)
    cfg = load_config(None, [*args, "train.eval_every=5", "data.eval={probe: p.jsonl}"], schema=SFTConfig)
    assert cfg.sft.stop_at_acc == 0.3


def test_assignment_is_validated():
    cfg = load_config(None, REQUIRED)
    with pytest.raises(ValidationError):
        cfg.rollout.group_size = 0


@pytest.mark.parametrize(
    ("text", "message"), [("[1, 2]\n", "expected a mapping"), ("a: [\n", "invalid YAML")]
)
def test_malformed_yaml_file(write_yaml, text, message):
    path = write_yaml(text)
    with pytest.raises(ConfigError, match=f"{path}: {message}"):
        load_config(path)


def test_dump_loads_back_equal(write_yaml, tmp_path):
    path = write_yaml(
        """
model: {path: ./ckpt, lora: {enabled: true, r: 4}}
data: {train: ./t.jsonl, eval: {held: h.jsonl}}
reward: {functions: [format], weights: [2.0]}
stages:
  - {name: short, steps: 5, data.train: ./short.jsonl}
""",
        name="a/run.yaml",
    )
    cfg = load_config(path, ["train.lr=2e-6"])
    dumped = write_yaml(dump_config(cfg), name="elsewhere/resolved.yaml")  # another folder on purpose
    assert load_config(dumped) == cfg


def test_sft_schema_has_its_own_sections():
    cfg = load_config(None, [*REQUIRED, "sft.epochs=3"], schema=SFTConfig)
    assert isinstance(cfg, SFTConfig) and cfg.sft.epochs == 3
    with pytest.raises(ConfigError, match=r"rollout: unknown key"):
        load_config(None, [*REQUIRED, "rollout.group_size=4"], schema=SFTConfig)


def test_every_field_is_documented():
    from vlrl.config.sections import Section

    def sections(model):
        yield model
        for field in model.model_fields.values():
            if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
                yield from sections(field.annotation)

    for schema in (TrainConfig, SFTConfig):
        for model in sections(schema):
            for name, field in model.model_fields.items():
                assert field.description, f"{model.__name__}.{name} has no description"


def test_a_bare_off_in_yaml_is_the_routing_replay_setting(tmp_path):
    # YAML 1.1 reads `off` as false; for model.routing_replay it is the word.
    path = tmp_path / "c.yaml"
    path.write_text("model: {routing_replay: off}\n")
    assert load_config(path, REQUIRED).model.routing_replay == "off"
    assert load_config(None, [*REQUIRED, "model.routing_replay=off"]).model.routing_replay == "off"
