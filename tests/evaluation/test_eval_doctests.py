"""The examples in the evaluation modules' docstrings run and hold."""

import doctest
import importlib

import pytest

MODULES = [
    f"vlrl.evaluation.{name}"
    for name in ("stats", "extraction", "mathvista", "mmmu", "mathverse", "records", "benchmarks", "loaders")
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
