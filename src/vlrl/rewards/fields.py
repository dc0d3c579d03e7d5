"""The one convention every reward follows for its keyword fields.

A reward is `fn(completions: list[str], **fields) -> list[float | None]`. Every field is a list with
one entry per completion, settings included (`max_new_tokens=[1024] * n`): one shape for all fields
lets the caller slice a batch into samples without knowing which field is which. A reward reads the
fields it needs, takes a default for an optional field that is absent, and ignores the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def column(values: Sequence[Any] | None, n: int, default: Any) -> Sequence[Any]:
    """The per-sample values of an optional field, or `default` for every sample when it is absent.

    >>> column(None, 2, 3), column([4, 5], 2, 3)
    ([3, 3], [4, 5])
    """
    return [default] * n if values is None else values
