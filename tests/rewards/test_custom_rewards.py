"""A user's reward file that is misspelt, missing or broken: one line naming the file, the line or
the function, raised at setup before any model is loaded."""

from pathlib import Path

import pytest

from vlrl.cli import main
from vlrl.config import ConfigError, TrainConfig, load_config
from vlrl.rewards.runner import RewardLoadError, check_rewards, load_reward

SHAPES = """
import math

def shape_words(completions, **fields):
    return [float("shape" in c) for c in completions]

def _helper():
    return math.pi
"""


@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(SHAPES)
    return path


def test_a_misspelt_function_gets_did_you_mean(shapes):
    with pytest.raises(RewardLoadError) as caught:
        load_reward(f"{shapes}:shape_wrods")
    assert (
        str(caught.value)
        == f"reward file {shapes} has no function 'shape_wrods' (did you mean 'shape_words'?)"
    )


def test_a_function_nothing_like_lists_what_the_file_defines(shapes):
    # `math` (imported) and `_helper` (defined) are not offered: only the file's own callables are.
    with pytest.raises(RewardLoadError, match=r"no function 'zzz' \(known: _helper, shape_words\)"):
        load_reward(f"{shapes}:zzz")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(RewardLoadError, match=f"reward file not found: {tmp_path / 'gone.py'}"):
        load_reward(f"{tmp_path / 'gone.py'}:fn")


def test_a_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def ok(completions, **fields):\n    return []\n\ndef bad(:\n    pass\n")
    with pytest.raises(RewardLoadError, match=rf"reward file {path}:4 fails to import: SyntaxError"):
        load_reward(f"{path}:ok")


def test_an_exception_at_import_names_the_line_in_the_users_file(tmp_path):
    path = tmp_path / "needs_dep.py"
    path.write_text("x = 1\nimport vlrl_no_such_module_zz\n")
    with pytest.raises(
        RewardLoadError,
        match=rf"{path}:2 fails to import: ModuleNotFoundError: No module named 'vlrl_no_such_module_zz'",
    ):
        load_reward(f"{path}:fn")


def test_a_file_without_a_function_says_how_to_name_one():
    with pytest.raises(RewardLoadError, match=r"use 'my_rewards.py:function_name'"):
        load_reward("my_rewards.py")


def test_a_file_is_executed_once_until_it_changes(tmp_path):
    path = tmp_path / "counted.py"
    runs = tmp_path / "runs.txt"
    path.write_text(
        f"open({str(runs)!r}, 'a').write('x')\ndef fn(completions, **fields):\n    return [1.0]\n"
    )
    load_reward(f"{path}:fn")
    load_reward(f"{path}:fn")  # the setup check and then the scorer
    assert runs.read_text() == "x"


def _config(tmp_path: Path, *overrides: str) -> TrainConfig:
    base = [f"model.path={tmp_path / 'no_model'}", f"data.train={tmp_path / 'no_data.jsonl'}"]
    return load_config(None, [*base, *overrides], schema=TrainConfig)


def test_check_rewards_names_the_key_of_the_stage(tmp_path, shapes):
    cfg = _config(tmp_path, f"reward.functions=[format,{shapes}:shape_words]")
    check_rewards(cfg)
    cfg.stages.append({"steps": 2, "reward.functions": ["format", f"{shapes}:shape_wrods"]})
    with pytest.raises(
        ConfigError, match=r"^stages\[0\]\.reward\.functions\[1\]: .*did you mean 'shape_words'"
    ):
        check_rewards(cfg)


def test_vlrl_train_prints_one_line_before_loading_a_model(tmp_path, shapes, capsys):
    config = tmp_path / "grpo.yaml"
    config.write_text(
        f"model:\n  path: {tmp_path / 'no_model'}\ndata:\n  train: {tmp_path / 'no_data.jsonl'}\n"
        f"reward:\n  functions: [format, ./my_rewards.py:shape_wrods]\n"
    )
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"vlrl train: error: reward.functions[1]: reward file {shapes} has no function 'shape_wrods' "
        "(did you mean 'shape_words'?)\n"
    )


def test_check_rewards_refuses_two_rewards_scored_under_one_name(tmp_path, shapes):
    cfg = _config(tmp_path, f"reward.functions=[format,{shapes}:shape_words,{shapes}:shape_words]")
    with pytest.raises(
        ConfigError,
        match=r"^reward\.functions: .* \(entries 1 and 2\) would both be scored as 'my_rewards\.shape_words'",
    ):
        check_rewards(cfg)
