"""`vlrl.training` is a regular package whose trainers load on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import vlrl.training


def test_training_is_a_documented_package_not_a_namespace():
    assert vlrl.training.__file__ is not None  # None for a namespace package
    assert "GRPOTrainer" in vlrl.training.__doc__


def test_trainers_are_exported_lazily():
    code = (
        "import sys, vlrl.training.checkpoint, vlrl.training.guards\n"
        "assert 'vlrl.training.grpo' not in sys.modules, 'checkpoint or guards loaded the RL loop'\n"
        "from vlrl.training import GRPOTrainer, SFTTrainer\n"
        "from vlrl.training.grpo import GRPOTrainer as G\n"
        "assert GRPOTrainer is G and SFTTrainer.__module__ == 'vlrl.training.sft'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="'vlrl.training' has no attribute 'GRPOTrainr'"):
        vlrl.training.GRPOTrainr  # noqa: B018
