"""vlrl.lazy: package exports imported on first use."""

import doctest
import sys

import pytest

from vlrl import lazy


def test_doctests():
    assert doctest.testmod(lazy).failed == 0


def test_an_export_is_imported_on_first_use_and_listed_before(monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    getattr_, dir_ = lazy.lazy_exports("vlrl", {"rgb_to_hsv": "colorsys"})
    assert "rgb_to_hsv" in dir_() and "colorsys" not in sys.modules
    assert getattr_("rgb_to_hsv")(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    with pytest.raises(AttributeError, match="module 'vlrl' has no attribute 'hsv'"):
        getattr_("hsv")
