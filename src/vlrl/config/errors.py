"""Config errors written for people: where (file or override), which dotted key, what is wrong."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from pydantic_core import ErrorDetails


class ConfigError(ValueError):
    """A config file, override or stage is wrong. One line per problem: `<source>: <key>: <what>`.

    `problems` keeps the (source, dotted key, what is wrong) triples for callers that want them.
    """

    def __init__(self, problems: Sequence[tuple[str, str, str]]):
        self.problems = list(problems)
        super().__init__("\n".join(": ".join(part for part in problem if part) for problem in self.problems))


class BadKey(Exception):
    """A key that is not in the schema, or used the wrong way; the caller adds where it came from."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def join_key(*parts: str) -> str:
    """`join_key("stages[0]", "rollout.top_k")` -> 'stages[0].rollout.top_k'; empty parts are skipped."""
    return ".".join(part for part in parts if part)


def dotted(loc: Sequence[str | int]) -> str:
    """A pydantic error location as the user writes it: ('data', 'train', 1) -> 'data.train[1]'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def describe(error: ErrorDetails) -> str:
    """The message of one pydantic error, with the offending value when it is short."""
    message = error["msg"]
    value = error.get("input")
    if error["type"] != "missing" and isinstance(value, str | int | float):
        message += f" (got {value!r}{_did_you_mean(error)})"
    return message


def _did_you_mean(error: ErrorDetails) -> str:
    """'; did you mean ...?' when a name missed one of a Literal's names closely (algo.advantage=grpoo)."""
    if error["type"] != "literal_error" or not isinstance(error["input"], str):
        return ""
    # pydantic lists the allowed values in ctx as text: "'grpo', 'rloo' or 'dr_grpo'".
    names = re.findall(r"'([^']*)'", error.get("ctx", {}).get("expected", ""))
    close = difflib.get_close_matches(error["input"], names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
