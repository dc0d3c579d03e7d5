"""Rollout/training mismatch corrections: `MISMATCH_CORRECTIONS[name](old_logp, behaviour_logp, mask, cfg)`.

The sampler (a vLLM engine, a server, another precision or kernel) is not exactly the training
model: a token drawn with probability pi_behaviour(y_t) is trained on as if pi_old(y_t) had drawn it.
The importance ratio rho_t = pi_old(y_t) / pi_behaviour(y_t) corrects that (Yao et al. 2025, "Your
Efficient RL Framework Secretly Brings You Off-Policy RL Training", fengyao.notion.site/off-policy-rl),
and the entries bound its variance, at token level (rho_t per token) or sequence level (the product
rho = exp(sum_t log rho_t) over the response, one weight per sequence), as verl's `rollout_corr`:

    none        weight 1 (the metrics are still computed)
    tis_token   truncated IS: min(rho_t, C)                                  (Yao et al.)
    tis_seq     min(rho, C) on every token of the sequence
    mis_token   masked IS: rho_t inside [lower, C], else 0 (the token drops; IcePop, arXiv 2510.18855)
    mis_seq     rho inside [lower, C], else the whole sequence drops

Shapes: old_logp (the training side's log-probs of the step's "old" policy), behaviour_logp (the
sampler's, `Completion.logprobs`), mask [B, T]. Each returns `(weight [B, T], metrics)`: the weight
carries no gradient and multiplies each token's policy loss before aggregation (the denominators
stay the batch's token counts); it is 0 at masked positions. The metrics, with the same keys for
every entry, describe the mismatch itself (mean and max |log rho_t|, a k3 estimate of
KL(behaviour || training) over the response tokens) and what the entry did (mean weight, fraction
of tokens clipped, fraction masked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vlrl.algos.kl import k3
from vlrl.algos.tensor_ops import masked_mean, masked_sum

if TYPE_CHECKING:
    from vlrl.config import AlgoSection

MAX_LOG_RATIO = 20.0  # log-ratios are clamped to +-20 before exp(), as verl's SAFETY_BOUND


@dataclass(frozen=True)
class MismatchConfig:
    """Thresholds of the corrections: weights are truncated at, or kept within [lower, upper]."""

    upper: float = 2.0
    """C: TIS truncates the weight at C; MIS keeps weights <= C (verl's rollout_is_threshold 2.0)."""
    lower: float | None = None
    """MIS keeps weights >= lower; None: 1 / upper (verl's default)."""

    @classmethod
    def from_config(cls, algo: AlgoSection) -> MismatchConfig:
        """The thresholds as the run's `algo` section sets them (rollout_is_threshold[_lower])."""
        return cls(upper=algo.rollout_is_threshold, lower=algo.rollout_is_threshold_lower)

    def __post_init__(self) -> None:
        if self.upper <= 1:
            raise ValueError(f"upper must be > 1, got {self.upper}")
        if self.lower is not None and not 0 < self.lower < 1:
            raise ValueError(f"lower must be in (0, 1) or None, got {self.lower}")

    @property
    def low(self) -> float:
        return 1 / self.upper if self.lower is None else self.lower


def _log_rho(old_logp: Tensor, behaviour_logp: Tensor, mask: Tensor) -> Tensor:
    """[B, T] log rho_t = old_logp - behaviour_logp on valid tokens, 0 elsewhere; no gradient."""
    return torch.where(mask.bool(), old_logp.detach() - behaviour_logp, torch.zeros_like(old_logp)).float()


def _sequence(log_rho: Tensor, mask: Tensor) -> Tensor:
    """[B, T] the sequence's log rho = sum_t log rho_t, broadcast to each of its tokens."""
    return masked_sum(log_rho, mask, dim=-1)[:, None].expand_as(log_rho)


def _finish(weight: Tensor, log_rho: Tensor, clipped: Tensor, masked: Tensor, mask: Tensor):
    """Zero the weight at padding and compute the shared metrics (detached scalars)."""
    valid = mask.bool()
    weight = torch.where(valid, weight, torch.zeros_like(weight))
    abs_log = log_rho.abs()
    metrics = {
        "log_ratio_mean_abs": masked_mean(abs_log, valid),
        "log_ratio_max_abs": torch.where(valid, abs_log, torch.zeros_like(abs_log)).max(),
        # tokens were drawn from behaviour: KL(behaviour || training) ~ mean of k3 with d = log rho
        "kl": masked_mean(k3(-log_rho, torch.zeros_like(log_rho)), valid),
        "weight_mean": masked_mean(weight, valid),
        "clipped_frac": masked_mean(clipped.float(), valid),
        "masked_frac": masked_mean(masked.float(), valid),
    }
    return weight, metrics


def none(old_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, cfg: MismatchConfig):
    """No correction: weight 1 on every valid token; the mismatch is only measured.
    old_logp/behaviour_logp/mask [B, T] -> weight [B, T], metrics."""
    log_rho = _log_rho(old_logp, behaviour_logp, mask)
    no = torch.zeros_like(mask, dtype=torch.bool)
    return _finish(torch.ones_like(log_rho), log_rho, no, no, mask)


def _truncated(log_w: Tensor, log_rho: Tensor, mask: Tensor, cfg: MismatchConfig):
    w = log_w.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    clipped = w > cfg.upper
    return _finish(w.clamp(max=cfg.upper), log_rho, clipped, torch.zeros_like(clipped), mask)


def _masked(log_w: Tensor, log_rho: Tensor, mask: Tensor, cfg: MismatchConfig):
    w = log_w.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    out = (w < cfg.low) | (w > cfg.upper)
    return _finish(torch.where(out, torch.zeros_like(w), w), log_rho, torch.zeros_like(out), out, mask)


def tis_token(old_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, cfg: MismatchConfig):
    """Token-level truncated importance sampling (Yao et al. 2025): w_t = min(rho_t, C).
    old_logp/behaviour_logp/mask [B, T] -> weight [B, T], metrics."""
    log_rho = _log_rho(old_logp, behaviour_logp, mask)
    return _truncated(log_rho, log_rho, mask, cfg)


def tis_seq(old_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, cfg: MismatchConfig):
    """Sequence-level TIS (verl rollout_is=sequence): w = min(prod_t rho_t, C) on every token.
    old_logp/behaviour_logp/mask [B, T] -> weight [B, T], metrics."""
    log_rho = _log_rho(old_logp, behaviour_logp, mask)
    return _truncated(_sequence(log_rho, mask), log_rho, mask, cfg)


def mis_token(old_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, cfg: MismatchConfig):
    """Token-level masked IS (IcePop, arXiv 2510.18855; verl rollout_rs=token): w_t = rho_t if
    lower <= rho_t <= C, else 0. old_logp/behaviour_logp/mask [B, T] -> weight [B, T], metrics."""
    log_rho = _log_rho(old_logp, behaviour_logp, mask)
    return _masked(log_rho, log_rho, mask, cfg)


def mis_seq(old_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, cfg: MismatchConfig):
    """Sequence-level masked IS (verl rollout_rs=sequence): w = rho = prod_t rho_t on every token if
    lower <= rho <= C, else 0 (the sequence drops).
    old_logp/behaviour_logp/mask [B, T] -> weight [B, T], metrics."""
    log_rho = _log_rho(old_logp, behaviour_logp, mask)
    return _masked(_sequence(log_rho, mask), log_rho, mask, cfg)


MismatchCorrection = Callable[[Tensor, Tensor, Tensor, MismatchConfig], tuple[Tensor, dict[str, Tensor]]]

MISMATCH_CORRECTIONS: dict[str, MismatchCorrection] = {
    "none": none,
    "tis_token": tis_token,
    "tis_seq": tis_seq,
    "mis_token": mis_token,
    "mis_seq": mis_seq,
}
