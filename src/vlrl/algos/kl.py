"""Per-token KL(pi || pi_ref) estimators: `KL_ESTIMATORS[name](logp, ref_logp) -> kl`, same shape.

From J. Schulman, "Approximating KL Divergence" (2020, http://joschu.net/blog/kl-approx.html),
for tokens sampled from pi, with log-ratio d = ref_logp - logp (= log r, r = pi_ref / pi):
  k1 = -d               unbiased, high variance, can be negative;
  k2 = d^2 / 2          biased, low variance, >= 0;
  k3 = (r - 1) - d      unbiased, low variance, >= 0 (GRPO's KL term, arXiv 2402.03300 eq. 4).
Reduce with a mask as for the policy loss (`vlrl.algos.aggregation`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

MAX_LOG_RATIO = 20.0
MAX_K3 = 10.0


def k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = logp - ref_logp (Schulman 2020). Any shape -> same shape."""
    return logp - ref_logp


def k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = 0.5 * (logp - ref_logp)^2 (Schulman 2020). Any shape -> same shape."""
    return 0.5 * (logp - ref_logp) ** 2


def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(d) - d - 1 with d = ref_logp - logp (Schulman 2020; GRPO's KL). Any shape -> same shape.

    d is clamped to [-20, 20] first: exp(20) ~ 4.9e8 is finite in float32 and bf16, while an
    unclamped d (a token the policy now finds ~impossible) overflows to inf and poisons the
    batch. k3 itself is then clamped to [-10, 10] as verl and EasyR1 do (`low_var_kl`): one
    token near the first clamp would otherwise outweigh the KL of the whole batch. Tokens beyond
    either clamp get zero gradient.
    """
    d = (ref_logp - logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return (d.exp() - d - 1).clamp(-MAX_K3, MAX_K3)


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": k1, "k2": k2, "k3": k3}
