"""The score phase keys every reward by a readable name: what `reward/<name>/mean` shows."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vlrl.config.sections import RewardSection
from vlrl.data import Sample
from vlrl.rewards.runner import RewardLoadError
from vlrl.rollout.base import Completion
from vlrl.training.scoring import RewardScorer

# Image-free samples: the pixel convention whatever the family, so no model is needed.
NO_MODEL = SimpleNamespace(box_fields=lambda sample: {})


def _reward_file(folder: Path, name: str, value: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(
        f"def shape_words(completions, **fields):\n    return [{value} * ('shape' in c) for c in completions]\n"
    )
    return path


def _score(functions: list[str], weights: list[float] | None = None):
    scorer = RewardScorer(RewardSection(functions=functions, weights=weights), NO_MODEL)
    completion = Completion(torch.tensor([1, 2]), torch.zeros(2), "a shape", "stop")
    return scorer.score([Sample("1", "q", "a")], [[completion]], 8)


def test_a_user_reward_is_named_after_its_function(tmp_path):
    one = _reward_file(tmp_path / "a" / "deep" / "path", "one.py", 1.0)
    total, scores, stats = _score(["format", f"{one}:shape_words"], [1.0, 2.0])
    assert list(scores) == ["format", "shape_words"]
    assert "reward/shape_words/failures" in stats
    # "a shape" has no <think>/<answer> layout: format 0; shape_words 1 weighted 2.
    assert total.tolist() == [[2.0]]


def test_two_functions_of_one_name_are_told_apart_by_their_files(tmp_path):
    one = _reward_file(tmp_path / "a", "one.py", 1.0)
    two = _reward_file(tmp_path / "b", "two.py", 0.5)
    total, scores, _ = _score([f"{one}:shape_words", f"{two}:shape_words"], [2.0, 3.0])
    assert scores == {"one.shape_words": [1.0], "two.shape_words": [0.5]}
    assert total.tolist() == [[2.0 * 1.0 + 3.0 * 0.5]]


def test_names_that_still_collide_are_refused_naming_both(tmp_path):
    one = _reward_file(tmp_path / "a", "rewards.py", 1.0)
    two = _reward_file(tmp_path / "b", "rewards.py", 0.5)
    with pytest.raises(
        RewardLoadError, match=r"\(entries 0 and 1\) would both be scored as 'rewards.shape_words'"
    ):
        _score([f"{one}:shape_words", f"{two}:shape_words"])
