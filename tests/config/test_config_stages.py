"""Stages: checked at load time (errors name stages[i].key) and applied with `apply_stage`."""

import pytest

from vlrl.config import ConfigError, apply_stage, load_config

BASE = "model: {path: m}\ndata: {train: t.jsonl}\n"


def test_apply_stage_overrides_dotted_and_nested_keys(write_yaml):
    path = write_yaml(
        BASE
        + """
stages:
  - {name: short, steps: 50, rollout.max_new_tokens: 64, rollout.group_size: 16}
  - name: long
    rollout: {max_new_tokens: 256}
"""
    )
    cfg = load_config(path)
    short, long = apply_stage(cfg, 0), apply_stage(cfg, 1)
    assert (short.train.steps, short.rollout.max_new_tokens, short.rollout.group_size) == (50, 64, 16)
    assert (long.rollout.max_new_tokens, long.rollout.group_size) == (256, 8)
    assert short.stages == []  # a stage's config describes that stage alone
    assert cfg.rollout.max_new_tokens == 128  # the base config is left as it was
    assert cfg.stages[1] == {"name": "long", "rollout.max_new_tokens": 256}  # stored flat


def test_stage_paths_resolve_against_the_yaml_folder(write_yaml):
    path = write_yaml(BASE + "stages:\n  - {data.train: ./hard.jsonl}\n", name="sub/run.yaml")
    assert apply_stage(load_config(path), 0).data.train == [str(path.parent / "hard.jsonl")]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            "[{name: a}, {rollout.max_new_token: 64}]",
            "stages[1].rollout.max_new_token: unknown key (did you mean 'max_new_tokens'?)",
        ),
        (
            "[{rollout: {group_size: 0}}]",
            "stages[0].rollout.group_size: Input should be greater than or equal to 1",
        ),
        ("[{steps: 0}]", "stages[0].train.steps: Input should be greater than or equal to 1"),
        ("[{reward.weights: [1.0]}]", "stages[0].reward.weights: has 1 entries but reward.functions has 2"),
        ("[{stages: []}]", "stages[0].stages: a stage cannot contain stages"),
        ("[{name: 3}]", "stages[0].name: must be a string"),
        ("[3]", "stages[0]: Input should be a valid dictionary"),
    ],
)
def test_bad_stages_are_errors_at_load_time(write_yaml, stages, message):
    path = write_yaml(BASE + f"stages: {stages}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_stages_given_as_override_are_named_by_it():
    override = "stages=[{rollout.top_p: 2}]"
    with pytest.raises(
        ConfigError, match=r"override 'stages=.*': stages\[0\]\.rollout\.top_p: Input should be"
    ):
        load_config(None, ["model.path=m", "data.train=t.jsonl", override])


def test_apply_stage_accepts_a_mapping():
    cfg = load_config(None, ["model.path=m", "data.train=t.jsonl"])
    assert apply_stage(cfg, {"algo": {"kl_beta": 0.1}}).algo.kl_beta == 0.1
    with pytest.raises(
        ConfigError, match=r"stage\.algo\.kl_beta: Input should be greater than or equal to 0"
    ):
        apply_stage(cfg, {"algo.kl_beta": -1})
