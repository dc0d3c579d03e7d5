"""REWARDS: every built-in reward by the name a config uses.

All share one signature, `fn(completions: list[str], **fields) -> list[float | None]` (fields: see
fields.py); None means "not applicable to this sample".
"""

from __future__ import annotations

from collections.abc import Callable

from vlrl.rewards.accuracy import accuracy_reward, hfrrf_reward
from vlrl.rewards.penalties import (
    language_mix_reward,
    min_length_reward,
    no_eos_reward,
    overlong_reward,
    repetition_reward,
)
from vlrl.rewards.perception import count_reward, giou_reward, iou_reward, ovd_map50_reward, ovd_map_reward
from vlrl.rewards.tags import caption_format_reward, format_reward

RewardFn = Callable[..., list[float | None]]

REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "caption_format": caption_format_reward,
    "accuracy": accuracy_reward,
    "hfrrf": hfrrf_reward,
    "overlong": overlong_reward,
    "repetition": repetition_reward,
    "language_mix": language_mix_reward,
    "no_eos": no_eos_reward,
    "min_length": min_length_reward,
    "iou": iou_reward,
    "giou": giou_reward,
    "ovd_map": ovd_map_reward,
    "ovd_map50": ovd_map50_reward,
    "count": count_reward,
}
