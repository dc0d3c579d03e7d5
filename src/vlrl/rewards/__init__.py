"""Rule-based rewards for R1-style RL: a table of plain functions with one signature.

    fn(completions: list[str], **fields) -> list[float | None]

Each field is a list with one entry per completion (fields.py); None means "not applicable to this
sample". `REWARDS` holds the built-ins by name; `load_reward` also takes `file.py:function` for user
rewards; `call_reward` runs any of them with per-sample fallback and time limits; `combine` sums
weighted scores.

>>> REWARDS["format"](["<think>two cats</think><answer>2</answer>"])
[1.0]
"""

from vlrl.rewards.runner import RewardError, call_reward, combine, load_reward
from vlrl.rewards.table import REWARDS, RewardFn

__all__ = ["REWARDS", "RewardError", "RewardFn", "call_reward", "combine", "load_reward"]
