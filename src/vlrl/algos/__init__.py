"""Algorithm maths for GRPO-family RL as pure tensor functions, one table per kind.

    ADVANTAGES[name](rewards[P, G]) -> advantages[P, G]                     advantages.py
    POLICY_LOSSES[name](logp, old_logp, adv[B], mask, cfg) -> (loss[B, T], metrics)   policy_losses.py
    AGGREGATIONS[mode](loss[B, T], mask, norm_length, denominator) -> loss[]  aggregation.py
    KL_ESTIMATORS[name](logp, ref_logp) -> kl (same shape)                   kl.py
    MISMATCH_CORRECTIONS[name](old_logp, behaviour_logp, mask, cfg) -> (weight[B, T], metrics)  mismatch.py

Look names up with `get(table, name, kind)` (unknown names fail listing the valid ones). One
policy update, per micro-batch (see aggregation.py for the shared denominator):

    adv = get(ADVANTAGES, "grpo", "advantage")(rewards).reshape(-1)         # [P, G] -> [B]
    loss_mat, metrics = get(POLICY_LOSSES, "ppo_clip", "policy loss")(logp, old_logp, adv, mask, cfg)
    weight, _ = get(MISMATCH_CORRECTIONS, "tis_token", "rollout correction")(old_logp, behaviour_logp, mask, mcfg)
    loss_mat = loss_mat * weight                                            # sampler != trainer
    loss_mat = loss_mat + beta * get(KL_ESTIMATORS, "k3", "KL estimator")(logp, ref_logp)
    loss = aggregate(loss_mat, mask, "token_mean", denominator=denom)
"""

from vlrl.algos.advantages import ADVANTAGES
from vlrl.algos.aggregation import AGGREGATIONS, aggregate, aggregation_denominator
from vlrl.algos.kl import KL_ESTIMATORS
from vlrl.algos.mismatch import MISMATCH_CORRECTIONS, MismatchConfig
from vlrl.algos.policy_losses import POLICY_LOSSES, LossConfig
from vlrl.algos.registry import get
from vlrl.algos.tensor_ops import entropy_from_logits, logprobs_from_logits, masked_mean

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "MISMATCH_CORRECTIONS",
    "POLICY_LOSSES",
    "LossConfig",
    "MismatchConfig",
    "aggregate",
    "aggregation_denominator",
    "entropy_from_logits",
    "get",
    "logprobs_from_logits",
    "masked_mean",
]
