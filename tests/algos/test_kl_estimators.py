"""KL estimators (Schulman 2020) against hand-derived values."""

import math

import torch
from torch.testing import assert_close

from vlrl.algos import KL_ESTIMATORS

LN2 = math.log(2.0)
# token 0: pi = ref; 1: ref = 2 pi; 2: pi = ref / e; 3: ref = pi / e
LOGP = torch.tensor([0.0, 0.0, -1.0, 0.0], dtype=torch.float64)
REF = torch.tensor([0.0, LN2, 0.0, -1.0], dtype=torch.float64)
# d = ref - logp = [0, ln2, 1, -1]


def test_k1():
    # k1 = logp - ref = -d = [0, -0.693147, -1, 1]  (negative values allowed)
    assert_close(KL_ESTIMATORS["k1"](LOGP, REF), torch.tensor([0.0, -LN2, -1.0, 1.0], dtype=torch.float64))


def test_k2():
    # k2 = d^2 / 2 = [0, 0.480453/2 = 0.240227, 0.5, 0.5]
    expected = torch.tensor([0.0, 0.240227, 0.5, 0.5], dtype=torch.float64)
    assert_close(KL_ESTIMATORS["k2"](LOGP, REF), expected, atol=1e-6, rtol=0)


def test_k3():
    # k3 = e^d - d - 1: d=0 -> 0; d=ln2 -> 2 - 0.693147 - 1 = 0.306853; d=1 -> e - 2 = 0.718282;
    # d=-1 -> 1/e + 1 - 1 = 0.367879
    expected = torch.tensor([0.0, 0.306853, 0.718282, 0.367879], dtype=torch.float64)
    assert_close(KL_ESTIMATORS["k3"](LOGP, REF), expected, atol=1e-6, rtol=0)


def test_k3_nonnegative_and_finite_under_extreme_ratios():
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(1000, generator=g) * 5, torch.randn(1000, generator=g) * 5
    assert (KL_ESTIMATORS["k3"](logp, ref) >= 0).all()
    assert (KL_ESTIMATORS["k2"](logp, ref) >= 0).all()
    # d = 100 clamps to 20 -> e^20 - 21 ; d = -inf clamps to -20 -> e^-20 + 19; both then to 10
    out = KL_ESTIMATORS["k3"](torch.tensor([0.0, 0.0]), torch.tensor([100.0, -math.inf]))
    assert torch.isfinite(out).all()
    assert_close(out, torch.tensor([10.0, 10.0]))


def test_k3_is_clamped_to_ten_with_zero_gradient_beyond():
    # d = ref - logp = [2, 3, -10, -12]:
    #   d=2:   e^2 - 3 = 4.389056 (kept)          d k3 / d logp = -(e^d - 1) = -6.389056
    #   d=3:   e^3 - 4 = 16.085537 -> 10          grad 0
    #   d=-10: e^-10 + 9 = 9.000045 (kept)        grad -(e^-10 - 1) = 0.999955
    #   d=-12: e^-12 + 11 = 11.000006 -> 10       grad 0
    logp = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([2.0, 3.0, -10.0, -12.0], dtype=torch.float64)
    out = KL_ESTIMATORS["k3"](logp, ref)
    assert_close(out, torch.tensor([4.389056, 10.0, 9.000045, 10.0], dtype=torch.float64), atol=1e-6, rtol=0)
    out.sum().backward()
    expected_grad = torch.tensor([-6.389056, 0.0, 0.999955, 0.0], dtype=torch.float64)
    assert_close(logp.grad, expected_grad, atol=1e-6, rtol=0)


def test_k1_and_k3_unbiased_on_samples():
    # pi = N(0, 1), ref = N(0.5, 1): KL(pi || ref) = 0.5^2 / 2 = 0.125. Samples x ~ pi.
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logp = -0.5 * x**2  # shared constants cancel
    ref = -0.5 * (x - 0.5) ** 2
    for name in ("k1", "k3"):
        assert abs(KL_ESTIMATORS[name](logp, ref).mean().item() - 0.125) < 0.01, name
