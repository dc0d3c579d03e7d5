"""The examples in the monitoring and report docstrings run and hold."""

import doctest
import importlib
import pkgutil

import pytest

import vlrl.monitoring
import vlrl.report

MODULES = [
    f"{package.__name__}.{m.name}"
    for package in (vlrl.monitoring, vlrl.report)
    for m in pkgutil.iter_modules(package.__path__)
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0
