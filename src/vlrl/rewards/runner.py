"""Running rewards safely, loading user rewards, and combining scores into one per sample.

The spec: "A user reward that raises is logged and counted, the sample gets the configured fallback,
and training continues." `call_reward` does that for built-in and user rewards alike.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import logging
import math
import numbers
import sys
import traceback
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

from vlrl.config import ConfigError, TrainConfig, apply_stage
from vlrl.config.errors import join_key
from vlrl.rewards.deadline import RewardTimeout, call_with_deadline
from vlrl.rewards.table import REWARDS, RewardFn

logger = logging.getLogger(__name__)


class RewardError(ValueError):
    """A reward broke its contract (return type or length). A bug in the reward, so it stops the run."""


def _validated(name: str, result: object, n: int) -> list[float | None]:
    if not isinstance(result, list | tuple) or len(result) != n:
        got = (
            f"{type(result).__name__} of length {len(result)}"
            if isinstance(result, list | tuple)
            else repr(result)[:80]
        )
        raise RewardError(
            f"reward '{name}' must return a list of {n} floats or None (one per completion), got {got}"
        )
    for i, value in enumerate(result):
        if value is not None and not isinstance(value, numbers.Real):
            raise RewardError(
                f"reward '{name}' returned {type(value).__name__} at index {i}; expected float or None"
            )
    return [None if v is None else float(v) for v in result]


def _one_sample(
    fn: RewardFn, name: str, completions, fields, i: int, fallback, timeout_s, stats
) -> float | None:
    """Sample i alone, so that only the samples that fail get the fallback."""
    sample_fields = {key: values[i : i + 1] for key, values in fields.items()}
    try:
        result = call_with_deadline(lambda: fn(completions[i : i + 1], **sample_fields), timeout_s)
    except RewardTimeout:
        stats["timeouts"] += 1
        logger.warning(
            "reward '%s' ran over %s s on sample %d; using fallback %s", name, timeout_s, i, fallback
        )
        return fallback
    except Exception:
        stats["errors"] += 1
        logger.exception("reward '%s' raised on sample %d; using fallback %s", name, i, fallback)
        return fallback
    return _validated(name, result, 1)[0]


def call_reward(
    fn: RewardFn,
    completions: Sequence[str],
    fields: Mapping[str, Sequence],
    fallback: float | None = 0.0,
    timeout_s: float | None = 10.0,
    name: str | None = None,
) -> tuple[list[float | None], dict[str, int]]:
    """Scores of `fn` on a batch, with failures isolated per sample; and counts of what went wrong.

    The batch runs as one call limited to `timeout_s` seconds (see deadline.py). If that call raises
    or runs over, each sample runs alone under the same limit and the samples that still fail get
    `fallback`. None stays None: it means "not applicable", not failure. A non-finite score (NaN
    would poison the group's advantages) also gets the fallback. A return that is not a list of
    len(completions) floats / None is a bug in the reward: `RewardError`, naming it.

    Returns (scores, {"errors": n, "timeouts": n, "not_applicable": n}), counting samples.

    >>> call_reward(lambda completions, **f: [1 / len(c) for c in completions], ["ab", ""], {})
    ([0.5, 0.0], {'errors': 1, 'timeouts': 0, 'not_applicable': 0})
    """
    name = name or getattr(fn, "__name__", repr(fn))
    n = len(completions)
    for key, values in fields.items():
        if not isinstance(values, list | tuple) or len(values) != n:
            raise ValueError(
                f"reward '{name}': field '{key}' must be a list with one entry per completion ({n})"
            )
    stats = {"errors": 0, "timeouts": 0, "not_applicable": 0}
    try:
        scores = _validated(name, call_with_deadline(lambda: fn(completions, **fields), timeout_s), n)
    except (Exception, RewardTimeout) as failure:
        if isinstance(failure, RewardError):
            raise
        logger.warning(
            "reward '%s' failed on a batch of %d (%r); retrying sample by sample", name, n, failure
        )
        scores = [_one_sample(fn, name, completions, fields, i, fallback, timeout_s, stats) for i in range(n)]
    for i, score in enumerate(scores):
        if score is not None and not math.isfinite(score):
            stats["errors"] += 1
            logger.warning("reward '%s' gave %s on sample %d; using fallback %s", name, score, i, fallback)
            scores[i] = fallback
    stats["not_applicable"] = sum(s is None for s in scores)
    return scores, stats


class RewardLoadError(ValueError):
    """A reward that cannot be loaded: unknown name, missing file, a file that fails to import, or
    no such function in it. A ValueError, so `vlrl` prints its one line instead of a traceback."""


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(known)) or 'none'}"


def _import_error(file: Path, exc: Exception) -> RewardLoadError:
    """The failure of a user file's import, at the line of that file where it happened."""
    if isinstance(exc, SyntaxError) and exc.filename == str(file):
        where, what = f"{file}:{exc.lineno}", exc.msg
    else:
        lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(file)]
        where, what = f"{file}:{lines[-1]}" if lines else str(file), str(exc)
    return RewardLoadError(f"reward file {where} fails to import: {type(exc).__name__}: {what}")


def _load_module(file: Path) -> ModuleType:
    """The user's file as a module, executed once per version of the file."""
    # A unique module name per file, registered in sys.modules so that dataclasses and pickling
    # inside the user's file work as in any imported module. The modification time in the name
    # lets the setup check and the scorer share one execution, yet picks up an edited file.
    key = f"{file}:{file.stat().st_mtime_ns}"
    module_name = f"vlrl_user_reward_{file.stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise _import_error(file, exc) from exc
    return module


def load_reward(spec: str) -> RewardFn:
    """A reward by name from REWARDS, or a user function given as `path/to/file.py:function_name`.

    Every way this can fail is a `RewardLoadError` naming the file (and line) or the function.

    >>> load_reward("format").__name__
    'format_reward'
    """
    if spec in REWARDS:
        return REWARDS[spec]
    path, _, attr = spec.rpartition(":")
    if spec.endswith(".py"):
        raise RewardLoadError(f"reward '{spec}' names a file but no function: use '{spec}:function_name'")
    if not path.endswith(".py") or not attr:
        raise RewardLoadError(
            f"unknown reward '{spec}' ({_did_you_mean(spec, list(REWARDS))}): use a built-in reward "
            "or 'path/to/file.py:function'"
        )
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise RewardLoadError(f"reward file not found: {file} (from '{spec}')")
    module = _load_module(file)
    fn = getattr(module, attr, None)
    if fn is None:
        defined = [
            name
            for name, value in vars(module).items()
            if callable(value) and getattr(value, "__module__", None) == module.__name__
        ]
        raise RewardLoadError(f"reward file {file} has no function '{attr}' ({_did_you_mean(attr, defined)})")
    if not callable(fn):
        raise RewardLoadError(f"'{attr}' in reward file {file} is a {type(fn).__name__}, not a function")
    return fn


def reward_names(specs: Sequence[str]) -> dict[str, str]:
    """The name each reward of `reward.functions` is scored and logged under (`reward/<name>/mean`).

    A built-in keeps its table name; a user reward `path/to/file.py:fn` is named `fn`, since
    its path would spell a metric nobody can read. When names collide (a user `format` beside
    the built-in, or `fn` from two files), the user rewards among them are named `<file stem>.fn`;
    two specs that still share a name (the same file listed twice, or `a/r.py:fn` and `b/r.py:fn`)
    are an error naming both.

    >>> reward_names(["format", "/x/a.py:format", "/x/b.py:shape_words"])
    {'format': 'format', '/x/a.py:format': 'a.format', '/x/b.py:shape_words': 'shape_words'}
    """
    short = {spec: spec if spec in REWARDS else spec.rpartition(":")[2] for spec in specs}
    taken = Counter(short[spec] for spec in specs)
    names: dict[str, str] = {}
    for i, spec in enumerate(specs):
        path, _, attr = spec.rpartition(":")
        name = short[spec] if taken[short[spec]] == 1 or spec in REWARDS else f"{Path(path).stem}.{attr}"
        first = next((j for j, other in enumerate(specs[:i]) if names[other] == name), None)
        if first is not None:
            raise RewardLoadError(
                f"'{specs[first]}' and '{spec}' (entries {first} and {i}) would both be scored as "
                f"'{name}': list each reward once, or rename one of the functions"
            )
        names[spec] = name
    return names


def check_rewards(cfg: TrainConfig) -> None:
    """Load every reward of `cfg` and of each of its stages, so that a misspelt function or a
    broken file fails at setup, before a model loads, rather than when its stage begins.

    Errors are `ConfigError`s naming the key, e.g. `stages[1].reward.functions[2]: ...`.
    """
    configs = {"": cfg} | {f"stages[{i}]": apply_stage(cfg, i) for i in range(len(cfg.stages))}
    for prefix, stage_cfg in configs.items():
        for i, spec in enumerate(stage_cfg.reward.functions):
            try:
                load_reward(spec)
            except RewardLoadError as exc:
                raise ConfigError([("", join_key(prefix, f"reward.functions[{i}]"), str(exc))]) from None
        try:
            reward_names(stage_cfg.reward.functions)
        except RewardLoadError as exc:
            raise ConfigError([("", join_key(prefix, "reward.functions"), str(exc))]) from None


def combine(
    scores: Mapping[str, Sequence[float | None]], weights: Mapping[str, float] | None = None
) -> list[float]:
    """Per-sample weighted sum of several rewards; a None (not applicable) counts as 0.

    Counting None as 0 lets one reward list cover a mixed batch: an accuracy reward that does not
    apply to a grounding sample neither helps nor hurts it. Weights default to 1.0; a weight for a
    reward that is not in `scores` is an error (most likely a misspelt name).

    >>> combine({"accuracy": [1.0, None], "format": [1.0, 0.0]}, {"format": 0.5})
    [1.5, 0.0]
    """
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(scores))
    if unknown:
        raise ValueError(f"weights for unknown rewards {unknown}; scored rewards are {sorted(scores)}")
    lengths = {name: len(values) for name, values in scores.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"rewards scored different numbers of samples: {lengths}")
    n = next(iter(lengths.values()), 0)
    return [
        sum(weights.get(name, 1.0) * (values[i] or 0.0) for name, values in scores.items()) for i in range(n)
    ]
