"""Per-token policy-gradient losses: `POLICY_LOSSES[name](logp, old_logp, advantages, mask, cfg)`.

Shapes: logp, old_logp, mask [B, T] (response tokens; mask bool or 0/1), advantages [B] (one per
sequence, see `vlrl.algos.advantages`). Each returns `(loss [B, T], metrics)`: the loss is 0 at
masked positions and is reduced by `vlrl.algos.aggregation.aggregate`; metrics are detached
scalars with the same keys for every entry (clip_frac, ratio_mean, approx_kl), averaged over
valid tokens. Masked positions may hold any finite log-probs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vlrl.algos.tensor_ops import masked_mean

if TYPE_CHECKING:
    from vlrl.config import AlgoSection

MAX_LOG_RATIO = 20.0  # log-ratios are clamped to +-20 so exp() stays finite (as verl does)


@dataclass(frozen=True)
class LossConfig:
    """Knobs shared by the policy losses."""

    clip_low: float = 0.2
    """Ratio lower bound is 1 - clip_low (PPO epsilon). GSPO uses ~3e-4."""
    clip_high: float = 0.2
    """Ratio upper bound is 1 + clip_high; DAPO "clip-higher" uses 0.28 (arXiv 2503.14476), GSPO ~4e-4."""
    clip_ratio_c: float | None = None
    """Dual-clip constant c > 1 (Ye et al. 2020, arXiv 1912.09729): for A < 0 the loss is capped at
    -c * A so a huge ratio cannot give an unbounded update. None disables it (verl uses 3.0)."""
    cispo_clip_low: float | None = None
    """CISPO's IS weight is at least 1 - cispo_clip_low; None: no lower bound (MiniMax-M1's setting)."""
    cispo_clip_high: float = 3.0
    """CISPO's IS weight is at most 1 + cispo_clip_high (4, as Tinker's CISPO default)."""
    sapo_tau_pos: float = 1.0
    """SAPO gate temperature for tokens with A > 0 (the paper's tau_pos = 1.0)."""
    sapo_tau_neg: float = 1.05
    """SAPO gate temperature for tokens with A <= 0 (tau_neg = 1.05 > tau_pos: negative updates decay faster)."""

    @classmethod
    def from_config(cls, algo: AlgoSection) -> LossConfig:
        """The knobs as the run's `algo` section sets them (clip_low, clip_high, dual_clip, cispo_*, sapo_*)."""
        return cls(
            clip_low=algo.clip_low,
            clip_high=algo.clip_high,
            clip_ratio_c=algo.dual_clip,
            cispo_clip_low=algo.cispo_clip_low,
            cispo_clip_high=algo.cispo_clip_high,
            sapo_tau_pos=algo.sapo_tau_pos,
            sapo_tau_neg=algo.sapo_tau_neg,
        )

    def __post_init__(self) -> None:
        if not 0 <= self.clip_low < 1:
            raise ValueError(f"clip_low must be in [0, 1), got {self.clip_low}")
        if self.clip_high < 0:
            raise ValueError(f"clip_high must be >= 0, got {self.clip_high}")
        if self.clip_ratio_c is not None and self.clip_ratio_c <= 1:
            raise ValueError(f"clip_ratio_c must be > 1 or None, got {self.clip_ratio_c}")
        if self.cispo_clip_low is not None and not 0 <= self.cispo_clip_low <= 1:
            raise ValueError(f"cispo_clip_low must be in [0, 1] or None, got {self.cispo_clip_low}")
        if self.cispo_clip_high < 0:
            raise ValueError(f"cispo_clip_high must be >= 0, got {self.cispo_clip_high}")
        for name in ("sapo_tau_pos", "sapo_tau_neg"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def _clipped_surrogate(ratio: Tensor, adv: Tensor, cfg: LossConfig) -> tuple[Tensor, Tensor]:
    """max(-A r, -A clip(r, 1-low, 1+high)), then the optional dual clip; [B, T] -> loss, clipped."""
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    if cfg.clip_ratio_c is not None:
        cap = -adv * cfg.clip_ratio_c  # constant: no gradient where the cap is active
        dual = (adv < 0) & (loss > cap)
        loss = torch.where(dual, cap, loss)
        is_clipped = is_clipped | dual
    return loss, is_clipped


def _finish(loss: Tensor, ratio: Tensor, is_clipped: Tensor, log_ratio: Tensor, mask: Tensor):
    """Zero the loss at masked positions and compute the shared metrics."""
    valid = mask.bool()
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean(is_clipped.to(ratio.dtype), valid),
            "ratio_mean": masked_mean(ratio, valid),
            "approx_kl": masked_mean(-log_ratio, valid),  # k1 estimate of KL(old || new)
        }
    return torch.where(valid, loss, torch.zeros_like(loss)), metrics


def ppo_clip(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cfg: LossConfig):
    """PPO clipped surrogate per token (Schulman et al. 2017, arXiv 1707.06347) as used by GRPO.

    r_t = exp(logp_t - old_logp_t); loss_t = -min(r_t A, clip(r_t, 1 - clip_low, 1 + clip_high) A),
    with separate low/high bounds (DAPO clip-higher, arXiv 2503.14476) and optional dual clip.
    logp/old_logp/mask [B, T], advantages [B] -> loss [B, T], metrics.
    """
    valid = mask.bool()
    log_ratio = torch.where(valid, logp - old_logp, torch.zeros_like(logp))
    ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    loss, is_clipped = _clipped_surrogate(ratio, advantages[:, None], cfg)
    return _finish(loss, ratio, is_clipped, log_ratio, mask)


def gspo(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cfg: LossConfig):
    """Group Sequence Policy Optimization (Zheng et al., arXiv 2507.18071), token-level form.

    Sequence ratio s_i = exp(mean over valid t of (logp - old_logp)), clipped to
    [1 - clip_low, 1 + clip_high] (the paper uses 3e-4 / 4e-4). Per token (the paper's GSPO-token form):
    s_i,t = sg[s_i] * exp(logp_t - sg[logp_t]): its value is s_i and d s_i,t / d logp_t = s_i, so with
    `seq_mean_token_mean` aggregation the gradient is exactly the paper's
    (1/G) sum_i s_i A_i grad log s_i. The loss is broadcast to [B, T] so aggregation still applies.
    logp/old_logp/mask [B, T], advantages [B] -> loss [B, T], metrics.
    """
    valid = mask.bool()
    log_ratio = torch.where(valid, logp - old_logp, torch.zeros_like(logp))
    log_seq = masked_mean(log_ratio, valid, dim=-1).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # [B]
    ratio = (log_seq.detach()[:, None] + logp - logp.detach()).exp()  # [B, T], value s_i
    loss, is_clipped = _clipped_surrogate(ratio, advantages[:, None], cfg)
    return _finish(loss, ratio, is_clipped, log_ratio, mask)


def reinforce(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cfg: LossConfig):
    """On-policy REINFORCE (Williams 1992): loss_t = -A * logp_t, no ratio and no clipping.

    Valid only for one update per rollout (old policy = current policy); old_logp is used only
    for the metrics, which then show how far the policy moved. cfg is unused.
    logp/old_logp/mask [B, T], advantages [B] -> loss [B, T], metrics.
    """
    valid = mask.bool()
    log_ratio = torch.where(valid, logp - old_logp, torch.zeros_like(logp)).detach()
    ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    loss = -advantages[:, None] * torch.where(valid, logp, torch.zeros_like(logp))
    return _finish(loss, ratio, torch.zeros_like(valid), log_ratio, mask)


def cispo(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cfg: LossConfig):
    """CISPO, Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv 2506.13585, eqs. 4-5).

    loss_t = -sg(r^_t) A logp_t with r^_t = clip(r_t, 1 - eps_low, 1 + eps_high), r_t = exp(logp_t -
    old_logp_t): REINFORCE with a truncated, stop-gradient importance weight, so unlike PPO's clip no
    token's gradient is ever zeroed (d loss_t / d logp_t = -r^_t A). MiniMax-M1 sets no lower bound
    (cispo_clip_low None) and tunes only eps_high. Normalised by all tokens of the group in the paper
    (`token_mean`). clip_frac counts tokens whose weight was truncated.
    logp/old_logp/mask [B, T], advantages [B] -> loss [B, T], metrics.
    """
    valid = mask.bool()
    log_ratio = torch.where(valid, logp - old_logp, torch.zeros_like(logp))
    ratio = log_ratio.detach().clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    low = 0.0 if cfg.cispo_clip_low is None else 1 - cfg.cispo_clip_low
    weight = ratio.clamp(low, 1 + cfg.cispo_clip_high)
    loss = -weight * advantages[:, None] * torch.where(valid, logp, torch.zeros_like(logp))
    return _finish(loss, ratio, weight != ratio, log_ratio.detach(), mask)


def sapo(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cfg: LossConfig):
    """SAPO, Soft Adaptive Policy Optimization (Gao et al., Qwen, arXiv 2511.20347): a soft gate, no clip.

    loss_t = -f(r_t) A with f(r) = (4 / tau) sigmoid(tau (r - 1)), tau = sapo_tau_pos where A > 0 and
    sapo_tau_neg otherwise (the paper: 1.0 and 1.05). The gradient is -w_t r_t A grad logp_t with
    w_t = 4 s (1 - s), s = sigmoid(tau (r_t - 1)): exactly the policy gradient at r = 1 (w = 1), decaying
    smoothly as the ratio leaves 1, faster for negative advantages. The paper averages per sequence
    (`seq_mean_token_mean`). Nothing is hard-clipped: clip_frac is 0.
    logp/old_logp/mask [B, T], advantages [B] -> loss [B, T], metrics.
    """
    valid = mask.bool()
    log_ratio = torch.where(valid, logp - old_logp, torch.zeros_like(logp))
    ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    adv = advantages[:, None]
    tau = torch.where(adv > 0, cfg.sapo_tau_pos, cfg.sapo_tau_neg).to(ratio.dtype)  # [B, 1]
    loss = -(4 / tau) * torch.sigmoid(tau * (ratio - 1)) * adv
    return _finish(loss, ratio, torch.zeros_like(valid), log_ratio, mask)


PolicyLoss = Callable[[Tensor, Tensor, Tensor, Tensor, LossConfig], tuple[Tensor, dict[str, Tensor]]]

POLICY_LOSSES: dict[str, PolicyLoss] = {
    "ppo_clip": ppo_clip,
    "gspo": gspo,
    "reinforce": reinforce,
    "cispo": cispo,
    "sapo": sapo,
}
