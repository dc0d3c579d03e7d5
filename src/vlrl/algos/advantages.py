"""Outcome advantage estimators: `ADVANTAGES[name](rewards[P, G]) -> advantages[P, G]`.

P prompts, G sampled responses per prompt, one scalar reward per response. Every response token
gets its sequence's advantage: the trainer flattens to [B = P*G] in prompt-major order
(`adv.reshape(-1)`) and the policy losses broadcast it over tokens. Integer rewards are promoted
to float32. Equal rewards never give NaN: a group of equal rewards gets advantage 0 in every
estimator except `reinforce_pp`, which has no per-prompt baseline (equal rewards over the whole
batch give 0 there).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

EPS = 1e-6  # added to standard deviations, so equal rewards give 0 / (0 + EPS) = 0


def _check(rewards: Tensor) -> Tensor:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [P, G] (prompts x samples), got shape {tuple(rewards.shape)}")
    return rewards if rewards.is_floating_point() else rewards.float()


def _whiten_all(x: Tensor) -> Tensor:
    """(x - mean) / (std + EPS) over every element; fewer than 2 elements -> zeros."""
    if x.numel() < 2:
        return torch.zeros_like(x)
    return (x - x.mean()) / (x.std() + EPS)


def grpo(rewards: Tensor) -> Tensor:
    """GRPO outcome advantage (DeepSeekMath, arXiv 2402.03300, sec. 4.1.2).

    A = (r - mean_group(r)) / (std_group(r) + 1e-6), std unbiased (torch.std). [P, G] -> [P, G].
    G = 1: the std is undefined and there is nothing to compare with, so A = 0.
    """
    r = _check(rewards)
    if r.shape[1] < 2:
        return torch.zeros_like(r)
    return (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + EPS)


def dr_grpo(rewards: Tensor) -> Tensor:
    """Dr. GRPO advantage (Liu et al., "Understanding R1-Zero-Like Training", arXiv 2503.20783).

    A = r - mean_group(r): no std division, which the paper shows biases updates toward
    too-easy / too-hard questions. [P, G] -> [P, G]; G = 1 gives 0.
    """
    r = _check(rewards)
    return r - r.mean(1, keepdim=True)


def rloo(rewards: Tensor) -> Tensor:
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024, arXiv 2402.14740; Kool et al. 2019).

    A_i = r_i - mean_{j != i} r_j = G/(G-1) * (r_i - mean_group(r)). [P, G] -> [P, G].
    G = 1 raises ValueError: there is no other sample to form the baseline, and a silent zero
    advantage would make the whole run a no-op.
    """
    r = _check(rewards)
    g = r.shape[1]
    if g < 2:
        raise ValueError("rloo needs at least 2 samples per prompt (G >= 2), got G = 1")
    return r - (r.sum(1, keepdim=True) - r) / (g - 1)


def reinforce_pp(rewards: Tensor) -> Tensor:
    """REINFORCE++ (Hu, arXiv 2501.03262): no per-prompt baseline, whitening over the whole batch.

    A = (r - mean_all(r)) / (std_all(r) + 1e-6), unbiased std over all P*G rewards. [P, G] -> [P, G].
    (The paper whitens token-level returns; with one outcome reward per sequence this is the
    per-sequence form, each sequence counted once whatever its length.)
    """
    return _whiten_all(_check(rewards))


def reinforce_pp_baseline(rewards: Tensor) -> Tensor:
    """REINFORCE++-baseline (arXiv 2501.03262; OpenRLHF `reinforce_baseline`).

    A = whiten_all(r - mean_group(r)): the group mean removes prompt difficulty, the batch
    whitening sets the scale without the per-group std of GRPO. [P, G] -> [P, G].
    """
    r = _check(rewards)
    return _whiten_all(r - r.mean(1, keepdim=True))


ADVANTAGES: dict[str, Callable[[Tensor], Tensor]] = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "reinforce_pp": reinforce_pp,
    "reinforce_pp_baseline": reinforce_pp_baseline,
}
