"""The examples in the rewards' docstrings run and hold."""

import doctest
import importlib
import pkgutil

import pytest

import vlrl.rewards

MODULES = ["vlrl.rewards"] + [f"vlrl.rewards.{m.name}" for m in pkgutil.iter_modules(vlrl.rewards.__path__)]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0
