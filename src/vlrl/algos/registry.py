"""Name lookup shared by every table in `vlrl.algos` (advantages, losses, aggregations, KL)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def get(table: Mapping[str, T], name: str, kind: str) -> T:
    """Return `table[name]`; an unknown name fails listing the valid ones.

    >>> get({"grpo": 1, "dr_grpo": 2}, "grpoo", "advantage")
    Traceback (most recent call last):
    ...
    ValueError: unknown advantage 'grpoo'; valid: dr_grpo, grpo
    """
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(table))}") from None
