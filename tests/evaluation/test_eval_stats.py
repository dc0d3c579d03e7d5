"""pass@k against its closed form and hand-worked cases; Wilson intervals against known values."""

from __future__ import annotations

from math import comb

import pytest

from vlrl.evaluation.stats import pass_at_k, wilson_interval


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 0, 3, 0.0),  # nothing correct
        (5, 3, 3, 1.0),  # n - c = 2 < k: every 3 drawn include a correct one
        (10, 1, 5, 0.5),  # 1 - C(9,5)/C(10,5) = 1 - 126/252
        (4, 2, 4, 1.0),
    ],
)
def test_pass_at_k_hand_worked(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_closed_form_everywhere():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                closed = 1 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12), (n, c, k)


def test_pass_at_k_stable_where_binomials_overflow_floats():
    # C(2000, 1000) ~ 1e600 is not a float; the product form needs no binomial at all.
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, 2, 0), (5, 2, 6), (3, -1, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@"):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    ("p", "n", "low", "high"),
    [
        (0.5, 10, 0.2366, 0.7634),  # 5/10: the textbook example
        (0.0, 10, 0.0, 0.2775),  # 0/10: not the degenerate Wald [0, 0]
        (1.0, 10, 0.7225, 1.0),
        (0.8, 100, 0.7112, 0.8666),
    ],
)
def test_wilson_interval_values(p, n, low, high):
    lo, hi = wilson_interval(p, n)
    assert (lo, hi) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))


def test_wilson_interval_shrinks_with_n_and_is_whole_range_without_data():
    widths = [hi - lo for lo, hi in (wilson_interval(0.3, n) for n in (10, 100, 1000))]
    assert widths == sorted(widths, reverse=True)
    assert wilson_interval(0.0, 0) == (0.0, 1.0)
