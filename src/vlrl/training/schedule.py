"""Learning-rate schedules: linear warmup from 0, then a decay from `SCHEDULES`.

The multiplier of the peak lr at optimizer step s (0-based, counted by `scheduler.step()`) is
  s / warmup_steps                          while s < warmup_steps,
  SCHEDULES[kind](progress, min_lr_ratio)   after, with progress = (s - warmup) / (total - warmup)
                                            clamped to [0, 1].
As in transformers' `get_*_schedule_with_warmup`, step 0 of a warmup runs at lr 0 and the decay
reaches `min_lr_ratio` at s = total_steps, one past the last step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def constant(progress: float, min_lr_ratio: float) -> float:
    """The peak lr throughout; `min_lr_ratio` is unused."""
    return 1.0


def linear(progress: float, min_lr_ratio: float) -> float:
    """Straight line from 1 at progress 0 to `min_lr_ratio` at progress 1."""
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)


def cosine(progress: float, min_lr_ratio: float) -> float:
    """Half a cosine from 1 to `min_lr_ratio` (SGDR, Loshchilov & Hutter, arXiv 1608.03983)."""
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "constant": constant,
    "linear": linear,
    "cosine": cosine,
}


def lr_multiplier(
    kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> Callable[[int], float]:
    """The function step -> multiplier of the peak lr that `LambdaLR` calls."""
    decay = SCHEDULES[kind]
    decay_steps = max(1, total_steps - warmup_steps)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return decay(min(1.0, (step - warmup_steps) / decay_steps), min_lr_ratio)

    return multiplier


def build_scheduler(
    optimizer: Optimizer, kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """A `LambdaLR` scaling every parameter group's lr by the schedule `kind` (see module docstring)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown train.lr_schedule '{kind}'; valid: {', '.join(SCHEDULES)}")
    if warmup_steps > total_steps:
        raise ValueError(f"train.warmup_steps ({warmup_steps}) exceeds train.steps ({total_steps})")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return LambdaLR(optimizer, lr_multiplier(kind, warmup_steps, total_steps, min_lr_ratio))
