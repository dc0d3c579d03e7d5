"""Alarms: rules over the recent metrics history that flag an unhealthy run while it trains.

Every rule has one signature, `rule(history, cfg) -> message | None`: `history` is the metrics of
the last `cfg.window` logged steps (oldest first), and a message means the rule fires. Rules
compare the "early" level (mean of the first third of the window) with the "late" one (mean of
the last third), which is steadier than the first and last step of a noisy RL run.

`AlarmMonitor` reports an alarm once when its rule starts firing and again only after the rule
stopped firing for a step: a condition that lasts a hundred steps is one alarm, not a hundred.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from vlrl.config.sections import MonitorSection
from vlrl.io import append_jsonl, read_jsonl

FORMAT_KEYS = ("reward/format/mean", "reward/caption_format/mean")
ACCURACY_KEYS = ("acc", "reward/accuracy/mean")

Pick = Callable[[dict], float | None]


@dataclass(frozen=True)
class Alarm:
    """One alarm: the step it started at, the rule's name, what it saw, and how bad it is."""

    step: int
    name: str
    message: str
    severity: str  # "warning": worth a look; "critical": the run is likely wasting compute

    def __str__(self) -> str:
        return f"alarm [{self.severity}] step {self.step} {self.name}: {self.message}"


def _finite(value) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def first_of(*keys: str) -> Pick:
    """A picker returning the first of `keys` that a record holds as a finite number."""

    def pick(record: dict) -> float | None:
        for key in keys:
            value = _finite(record.get(key))
            if value is not None:
                return value
        return None

    return pick


def eval_accuracy(record: dict) -> float | None:
    """Mean of the record's `eval/<set>/acc` values, or None on steps without evaluation."""
    values = [
        v
        for k, v in record.items()
        if k.startswith("eval/") and k.endswith("/acc") and _finite(v) is not None
    ]
    return sum(values) / len(values) if values else None


def series(history: list[dict], pick: Pick) -> list[float]:
    """The picked values of the records that have one, oldest first."""
    return [v for v in map(pick, history) if v is not None]


def early(values: list[float]) -> float:
    """Mean of the first third of `values` (at least one value)."""
    return statistics.fmean(values[: max(1, len(values) // 3)])


def late(values: list[float]) -> float:
    """Mean of the last third of `values` (at least one value)."""
    return statistics.fmean(values[-max(1, len(values) // 3) :])


def format_without_accuracy(history: list[dict], cfg: MonitorSection) -> str | None:
    """The format reward climbs while accuracy does not: the policy is learning the template, not
    the task (a reward that pays for format alone, or an accuracy reward that never fires)."""
    fmt = series(history, first_of(*FORMAT_KEYS))
    if len(fmt) < cfg.min_steps or late(fmt) - early(fmt) <= cfg.format_rise:
        return None
    rose = f"format reward rose {early(fmt):.2f} -> {late(fmt):.2f} over {len(fmt)} steps"
    acc = series(history, first_of(*ACCURACY_KEYS)) or series(history, eval_accuracy)
    if len(acc) < 2:
        return f"{rose} and no accuracy is logged: does a reward pay for the format only?"
    if late(acc) - early(acc) >= cfg.format_acc_min_rise:
        return None
    return (
        f"{rose} while accuracy went {early(acc):.2f} -> {late(acc):.2f}: format is learnt, the task is not"
    )


def empty_answers(history: list[dict], cfg: MonitorSection) -> str | None:
    """Many answers are empty or noise (punctuation, one word looped)."""

    def bad(record: dict) -> float | None:
        empty = _finite(record.get("answers/empty_frac"))
        degenerate = _finite(record.get("answers/degenerate_frac"))
        return None if empty is None and degenerate is None else (empty or 0.0) + (degenerate or 0.0)

    share = series(history, bad)
    if len(share) < cfg.min_steps or late(share) <= cfg.empty_answers_max:
        return None
    return f"{late(share):.0%} of recent answers are empty or degenerate (alarm above {cfg.empty_answers_max:.0%})"


def length_collapse(history: list[dict], cfg: MonitorSection) -> str | None:
    """Responses shrink fast: often the policy found that saying little avoids penalties."""
    lengths = series(history, first_of("response_length/mean"))
    if len(lengths) < cfg.min_steps or late(lengths) >= cfg.length_collapse_ratio * early(lengths):
        return None
    return f"mean response length fell {early(lengths):.1f} -> {late(lengths):.1f} tokens"


def length_blowup(history: list[dict], cfg: MonitorSection) -> str | None:
    """Responses grow fast: rambling or loops running into the token limit."""
    lengths = series(history, first_of("response_length/mean"))
    if len(lengths) < cfg.min_steps or late(lengths) <= cfg.length_blowup_ratio * early(lengths):
        return None
    return f"mean response length rose {early(lengths):.1f} -> {late(lengths):.1f} tokens"


def repetition(history: list[dict], cfg: MonitorSection) -> str | None:
    """Completions repeat themselves: the repetition reward where logged (it is minus the share of
    repeated n-grams), else the trainer's own `answers/repetition`."""

    def share(record: dict) -> float | None:
        reward = _finite(record.get("reward/repetition/mean"))
        return -reward if reward is not None else _finite(record.get("answers/repetition"))

    values = series(history, share)
    if len(values) < cfg.min_steps or late(values) <= cfg.repetition_max:
        return None
    return f"{late(values):.0%} of recent word n-grams are repeats (alarm above {cfg.repetition_max:.0%})"


def zero_std_groups_rising(history: list[dict], cfg: MonitorSection) -> str | None:
    """More and more groups score all G completions alike, so GRPO advantages are zero and those
    prompts teach nothing (the problem DAPO's dynamic sampling addresses, arXiv 2503.14476)."""
    frac = series(history, first_of("frac_zero_std_groups"))
    if len(frac) < cfg.min_steps:
        return None
    if late(frac) <= cfg.zero_std_max or late(frac) - early(frac) <= cfg.zero_std_min_rise:
        return None
    return (
        f"groups with equal rewards rose {early(frac):.0%} -> {late(frac):.0%}: little learning signal left"
    )


def _spike(history: list[dict], cfg: MonitorSection, key: str, factor: float, floor: float) -> str | None:
    """The latest `key` above `factor` x the median of the values before it and above `floor`."""
    values = series(history, first_of(key))
    if len(values) < cfg.min_steps:
        return None
    median = statistics.median(values[:-1])
    if values[-1] <= factor * median or values[-1] <= floor:
        return None
    return f"{key} {values[-1]:.3g} is {values[-1] / max(median, 1e-12):.1f}x its recent median {median:.3g}"


def kl_spike(history: list[dict], cfg: MonitorSection) -> str | None:
    """The KL to the reference jumps: an update moved the policy far in one step."""
    return _spike(history, cfg, "kl", cfg.kl_spike_factor, cfg.kl_spike_floor)


def clip_spike(history: list[dict], cfg: MonitorSection) -> str | None:
    """Many more tokens hit the PPO clip: the policy moved far from the one that sampled."""
    return _spike(history, cfg, "clip_frac", cfg.clip_spike_factor, cfg.clip_spike_floor)


def nonfinite_step(history: list[dict], cfg: MonitorSection) -> str | None:
    """The latest step had a NaN or infinite loss or gradient and was not applied; a few in a row
    stop the run (train.max_nonfinite_skips)."""
    last = history[-1] if history else {}
    if not last.get("train/skipped_nonfinite"):
        return None
    total = _finite(last.get("train/skipped_nonfinite_total"))
    so_far = f" ({total:.0f} so far)" if total is not None else ""
    return f"a NaN or infinite loss or gradient norm: the step was skipped{so_far}; is train.lr too high?"


def skipped_steps(history: list[dict], cfg: MonitorSection) -> str | None:
    """Many steps made no update because dynamic sampling found no group whose rewards differ:
    the task is too easy or too hard for the policy, and the compute is spent for nothing."""
    flags = series(history, first_of("train/skipped_no_signal"))
    if len(flags) < cfg.min_steps:
        return None
    share = statistics.fmean(flags)
    if share <= cfg.skipped_steps_max:
        return None
    return (
        f"{share:.0%} of the last {len(flags)} steps made no update: no group's rewards differed "
        f"(alarm above {cfg.skipped_steps_max:.0%})"
    )


def no_learning_signal(history: list[dict], cfg: MonitorSection) -> str | None:
    """Every group scored all its G completions alike for `cfg.no_signal_steps` steps in a row:
    every advantage is zero and nothing learns (all rewards 0: a policy that never succeeds, such
    as a random model before its cold-start SFT)."""
    recent = history[-cfg.no_signal_steps :]
    if len(recent) < cfg.no_signal_steps or any(r.get("frac_zero_std_groups") != 1.0 for r in recent):
        return None
    steps = f"the last {len(recent)} steps"
    if all(r.get("reward/total/mean") == 0.0 for r in recent):
        return (
            f"every reward was 0 for {steps}: the policy never succeeds, so nothing learns; start from a "
            "model that is sometimes right (a cold-start SFT checkpoint) or check the reward functions"
        )
    return f"every group's rewards were equal for {steps}: all advantages are zero, nothing learns"


def _sustained_above(history: list[dict], key: str, limit: float, cfg: MonitorSection) -> list[float] | None:
    """The last `min_steps` logged values of `key` when every one is above `limit`, else None."""
    recent = series(history, first_of(key))[-cfg.min_steps :]
    return recent if len(recent) == cfg.min_steps and min(recent) > limit else None


def expert_collapse(history: list[dict], cfg: MonitorSection) -> str | None:
    """Mixture-of-Experts: in some layer the busiest expert takes more than `expert_load_max` times
    the mean load, at each of the last `min_steps` steps: the router sends most tokens to a few
    experts, the rest stop learning (the routing collapse that RL on MoE models is prone to)."""
    recent = _sustained_above(history, "moe/load_max_over_mean", cfg.expert_load_max, cfg)
    if recent is None:
        return None
    return (
        f"the busiest expert took {recent[-1]:.1f}x the mean expert load for {len(recent)} steps "
        f"(alarm above {cfg.expert_load_max:g}x): the router is collapsing onto a few experts; "
        "freeze it (model.freeze: [router]) or replay the rollout's routes"
    )


def dead_experts(history: list[dict], cfg: MonitorSection) -> str | None:
    """Mixture-of-Experts: some experts received no token for `dead_expert_steps` steps."""
    last = _finite(history[-1].get("moe/dead_experts")) if history else None
    if not last:
        return None
    return (
        f"{last:.0f} (layer, expert) pairs received no token in the last {cfg.dead_expert_steps} "
        "steps: those experts no longer learn"
    )


def rollout_mismatch(history: list[dict], cfg: MonitorSection) -> str | None:
    """The sampler's log-probs and the trainer's disagree: `mismatch/kl` (KL(sampler || trainer)
    per response token) above `mismatch_kl_max` in each of the last `min_steps` steps. The update
    then treats another model's samples as its own (an engine in another dtype or with other
    kernels, a stale weight sync)."""
    recent = _sustained_above(history, "mismatch/kl", cfg.mismatch_kl_max, cfg)
    if recent is None:
        return None
    return (
        f"KL(sampler || trainer) was {recent[-1]:.2g} per token for {len(recent)} steps (alarm above "
        f"{cfg.mismatch_kl_max:g}): the rollout engine samples from another distribution than the one "
        "trained; correct for it (algo.rollout_correction: tis_token) or align the engine (dtype, weight sync)"
    )


Rule = Callable[[list[dict], MonitorSection], str | None]
# name -> (rule, severity). "critical" marks conditions a run rarely recovers from.
RULES: dict[str, tuple[Rule, str]] = {
    "format_without_accuracy": (format_without_accuracy, "warning"),
    "empty_answers": (empty_answers, "critical"),
    "length_collapse": (length_collapse, "critical"),
    "length_blowup": (length_blowup, "warning"),
    "repetition": (repetition, "warning"),
    "zero_std_groups_rising": (zero_std_groups_rising, "warning"),
    "kl_spike": (kl_spike, "critical"),
    "clip_spike": (clip_spike, "warning"),
    "nonfinite_step": (nonfinite_step, "critical"),
    "skipped_steps": (skipped_steps, "warning"),
    "no_learning_signal": (no_learning_signal, "critical"),
    "expert_collapse": (expert_collapse, "critical"),
    "rollout_mismatch": (rollout_mismatch, "warning"),
    "dead_experts": (dead_experts, "warning"),
}


class AlarmMonitor:
    """Feeds each logged step to every rule; returns the alarms that start at that step."""

    def __init__(self, cfg: MonitorSection):
        self.cfg = cfg
        self.history: deque[dict] = deque(maxlen=cfg.window)
        self.active: set[str] = set()  # rules firing at the last step, not to be reported again

    def update(self, step: int, metrics: dict) -> list[Alarm]:
        """Add the metrics of `step`; the alarms whose rule fires now and did not at the last step."""
        if not self.cfg.enabled:
            return []
        self.history.append({"step": step, **metrics})
        history = list(self.history)
        alarms = []
        for name, (rule, severity) in RULES.items():
            message = rule(history, self.cfg)
            if message is None:
                self.active.discard(name)
            elif name not in self.active:
                self.active.add(name)
                alarms.append(Alarm(step, name, message, severity))
        return alarms


def append_alarms(path: str | Path, alarms: list[Alarm]) -> None:
    """Append `alarms` to an alarms.jsonl file, one flushed JSON object per alarm."""
    if alarms:
        append_jsonl(path, (asdict(a) for a in alarms))


def read_alarms(path: str | Path) -> list[Alarm]:
    """The alarms of an alarms.jsonl file; [] when there is none (the run raised no alarm)."""
    path = Path(path)
    return [Alarm(**record) for record in read_jsonl(path)] if path.is_file() else []
