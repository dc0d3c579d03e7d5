"""Estimators for evaluation: unbiased pass@k and the Wilson score interval for an accuracy."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054
"""The 0.975 quantile of the standard normal distribution: two-sided 95% intervals."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from `n` samples of which `c` are correct.

    Chen et al. 2021 (HumanEval, arXiv 2107.03374, eq. 1): 1 - C(n-c, k) / C(n, k), the chance
    that k samples drawn without replacement from the n include a correct one. Computed in their
    numerically stable product form, 1 - prod_{i=n-c+1}^{n} (1 - k / i), since C(n, k) overflows
    floats for n in the hundreds.

    >>> [round(pass_at_k(5, 2, k), 10) for k in (1, 2)], pass_at_k(5, 4, 2)  # 2/5; 1 - C(3,2)/C(5,2)
    ([0.4, 0.7], 1.0)
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n correct samples, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n, with n={n} samples per question")
    if n - c < k:
        return 1.0  # every draw of k holds at least one of the c correct samples
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def wilson_interval(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion `p` observed over `n` trials (Wilson 1927, JASA 22).

    The set of true proportions q that a z-test at q would not reject given p:
    (p + z^2/2n  +/-  z * sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n). Unlike the Wald interval
    p +/- z*sqrt(p(1-p)/n) it stays inside [0, 1] and does not collapse to a point at p = 0 or 1,
    and its coverage stays near nominal for small n (Brown, Cai & DasGupta 2001, Stat. Sci. 16).
    With no trials the interval is the whole of [0, 1].

    >>> [round(x, 4) for x in wilson_interval(0.5, 10)], [round(x, 4) for x in wilson_interval(0.0, 10)]
    ([0.2366, 0.7634], [0.0, 0.2775])
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"wilson_interval needs a proportion in [0, 1], got {p}")
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
