"""Alarm rules on crafted metric histories: each fires on its failure and stays quiet on a healthy
run; the monitor reports an alarm once per episode and writes alarms.jsonl."""

import logging

import pytest

from vlrl.config.sections import MonitorSection
from vlrl.monitoring.alarms import RULES, Alarm, AlarmMonitor, append_alarms, read_alarms

CFG = MonitorSection()


def wobble(step: int) -> float:
    """Deterministic noise in [-0.02, 0.02], so that healthy curves are not perfectly smooth."""
    return ((step * 7) % 5 - 2) / 100


def healthy(step: int) -> dict:
    """A run that learns: accuracy and format rise together, everything else steady."""
    return {
        "reward/format/mean": min(0.9, 0.3 + 0.02 * step) + wobble(step),
        "acc": min(0.7, 0.1 + 0.015 * step) + wobble(step + 1),
        "reward/repetition/mean": -0.05 + wobble(step) / 2,
        "response_length/mean": 120 + 100 * wobble(step),
        "answers/empty_frac": 0.02,
        "answers/degenerate_frac": 0.0,
        "frac_zero_std_groups": 0.2 + wobble(step),
        "kl": 0.01 + wobble(step) / 10,
        "clip_frac": 0.02 + wobble(step) / 10,
        "moe/load_max_over_mean": 1.6 + 10 * wobble(step),
        "moe/dead_experts": 0.0,
        "mismatch/kl": 1e-4 + wobble(step) / 100,
    }


def feed(records: list[dict], cfg: MonitorSection = CFG) -> list[Alarm]:
    monitor = AlarmMonitor(cfg)
    return [a for step, r in enumerate(records, start=1) for a in monitor.update(step, r)]


def changed(steps: int, **curves) -> list[dict]:
    """A healthy run of `steps` steps with some metrics replaced by `curve(step)`."""
    return [healthy(s) | {k: f(s) for k, f in curves.items()} for s in range(1, steps + 1)]


# rule -> a history on which it must fire (and only it)
FAILING = {
    "format_without_accuracy": changed(
        20, **{"reward/format/mean": lambda s: 0.9 * (s - 1) / 19, "acc": lambda s: 0.1}
    ),
    "empty_answers": changed(
        20, **{"answers/empty_frac": lambda s: 0.2, "answers/degenerate_frac": lambda s: 0.25}
    ),
    "length_collapse": changed(20, **{"response_length/mean": lambda s: 200 - 8 * s}),
    "length_blowup": changed(20, **{"response_length/mean": lambda s: 100 + 20 * s}),
    "repetition": changed(20, **{"reward/repetition/mean": lambda s: -0.7}),
    "zero_std_groups_rising": changed(20, frac_zero_std_groups=lambda s: 0.2 + 0.04 * s),
    "kl_spike": changed(20, kl=lambda s: 0.6 if s == 20 else 0.01),
    "clip_spike": changed(20, clip_frac=lambda s: 0.4 if s == 20 else 0.02),
    "nonfinite_step": changed(20, **{"train/skipped_nonfinite": lambda s: float(s == 20)}),
    # Every other step skipped: 50% of the window, above the 25% default.
    "skipped_steps": changed(20, **{"train/skipped_no_signal": lambda s: float(s % 2 == 0)}),
    # A random policy: every reward 0, so every group's rewards are equal, from the first step on.
    "no_learning_signal": changed(
        20, frac_zero_std_groups=lambda s: 1.0, **{"reward/total/mean": lambda s: 0.0}
    ),
    # The router sends ever more tokens to one expert: 1.6x the mean load -> 7.3x.
    "expert_collapse": changed(20, **{"moe/load_max_over_mean": lambda s: 1.3 + 0.3 * s}),
    # The engine drifts from the trained model: KL(sampler || trainer) 0.02 per token from step 15.
    "rollout_mismatch": changed(20, **{"mismatch/kl": lambda s: 0.02 if s >= 15 else 1e-4}),
    # Two experts starve from step 15 on (20 steps after their last token at step -5, say).
    "dead_experts": changed(20, **{"moe/dead_experts": lambda s: 2.0 if s >= 15 else 0.0}),
}


def test_every_rule_has_a_failing_history():
    assert set(FAILING) == set(RULES)


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_fires_on_its_failure_only(name):
    fired = {a.name for a in feed(FAILING[name])}
    assert fired == {name}


def test_a_healthy_run_raises_nothing():
    assert feed(changed(100)) == []


def test_format_only_reward_fires_and_not_when_accuracy_rises_too():
    # The acceptance case: format 0 -> 0.9 over 20 steps while accuracy stays at 0.1.
    format_rises = {"reward/format/mean": lambda s: 0.9 * (s - 1) / 19}
    alarms = feed(changed(20, **format_rises, acc=lambda s: 0.1))
    assert [a.name for a in alarms] == ["format_without_accuracy"]
    assert "accuracy went 0.10 -> 0.10" in alarms[0].message
    assert feed(changed(20, **format_rises, acc=lambda s: 0.1 + 0.03 * s)) == []


def test_format_only_reward_without_any_accuracy_metric_fires():
    # A reward list of [format] logs no accuracy at all: that is the case to warn about.
    records = [{"reward/format/mean": 0.9 * (s - 1) / 19} for s in range(1, 21)]
    (alarm,) = feed(records)
    assert alarm.name == "format_without_accuracy" and "no accuracy is logged" in alarm.message


def test_other_format_and_accuracy_keys_are_read():
    records = [
        {"reward/caption_format/mean": 0.9 * (s - 1) / 19, "reward/accuracy/mean": 0.1 + 0.03 * s}
        for s in range(1, 21)
    ]
    assert feed(records) == []
    # With only evaluation accuracy, every 5 steps, rising with the format: quiet too.
    records = [
        {"reward/format/mean": 0.9 * (s - 1) / 19}
        | ({"eval/heldout/acc": 0.1 + 0.03 * s} if s % 5 == 0 else {})
        for s in range(1, 21)
    ]
    assert feed(records) == []


def test_repetition_falls_back_to_the_trainers_own_metric():
    records = changed(20, **{"answers/repetition": lambda s: 0.8})
    assert feed(records) == []  # the repetition reward (healthy) is preferred when logged
    for r in records:
        del r["reward/repetition/mean"]
    assert [a.name for a in feed(records)] == ["repetition"]


def test_zero_std_groups_must_be_high_and_rising():
    assert feed(changed(30, frac_zero_std_groups=lambda s: 0.9)) == []  # high but steady
    assert feed(changed(30, frac_zero_std_groups=lambda s: 0.01 * s)) == []  # rising but low


def test_spikes_need_the_absolute_floor():
    # 8x the median, but a KL of 0.08 (below the 0.1 floor) is not worth an alarm.
    assert feed(changed(20, kl=lambda s: 0.08 if s == 20 else 0.01)) == []


def test_no_alarm_before_min_steps():
    short = FAILING["length_collapse"][: CFG.min_steps - 1]
    assert feed(short) == []


def test_an_alarm_fires_once_and_again_only_after_it_cleared():
    # Collapsed length from step 1 to 40: one alarm; back to normal for a while, then again.
    lengths = lambda s: 200 if s <= 10 else 40 if s <= 40 else 200 if s <= 80 else 40  # noqa: E731
    alarms = feed(changed(120, **{"response_length/mean": lengths}))
    assert [a.name for a in alarms] == ["length_collapse", "length_blowup", "length_collapse"]
    first, _, second = alarms
    assert 10 < first.step < 20 and 80 < second.step < 90


def test_disabled_monitor_is_silent():
    assert feed(FAILING["kl_spike"], MonitorSection(enabled=False)) == []


def test_the_monitor_returns_alarms_and_shows_none_itself(capsys, caplog):
    # The trainer prints each alarm once; a log record here printed every alarm a second time.
    with caplog.at_level(logging.DEBUG):
        (alarm,) = feed(FAILING["kl_spike"])
    assert alarm.severity == "critical" and alarm.step == 20
    assert capsys.readouterr() == ("", "") and not caplog.records


def test_alarms_jsonl_round_trip(tmp_path):
    path = tmp_path / "alarms.jsonl"
    assert read_alarms(path) == []
    first = [Alarm(3, "kl_spike", "kl 0.6 is 60x", "critical")]
    second = [Alarm(9, "repetition", "70% repeats", "warning")]
    append_alarms(path, first)
    append_alarms(path, [])
    append_alarms(path, second)
    assert read_alarms(path) == first + second


def test_nonfinite_step_fires_on_every_episode_of_skipped_steps():
    # Skips at steps 3 and 7-8: two alarms (a run of skips is one episode), counting the total.
    flags = {3: 1, 7: 2, 8: 3}
    records = [
        {
            "train/skipped_nonfinite": float(s in flags),
            "train/skipped_nonfinite_total": float(flags.get(s, 0)),
        }
        for s in range(1, 11)
    ]
    alarms = feed(records)
    assert [(a.step, a.name, a.severity) for a in alarms] == [
        (3, "nonfinite_step", "critical"),
        (7, "nonfinite_step", "critical"),
    ]
    assert "(2 so far)" in alarms[1].message


def test_skipped_steps_fire_above_the_share_only():
    # 1 step in 4 skipped is at most 25%: not above monitor.skipped_steps_max (0.25); 1 in 2 is.
    assert feed(changed(20, **{"train/skipped_no_signal": lambda s: float(s % 4 == 0)})) == []
    (alarm,) = feed(changed(20, **{"train/skipped_no_signal": lambda s: float(s % 2 == 0)}))
    assert alarm.name == "skipped_steps" and "made no update" in alarm.message


def test_min_steps_cannot_exceed_the_window():
    with pytest.raises(ValueError, match="min_steps"):
        MonitorSection(window=5, min_steps=8)


def test_no_learning_signal_needs_every_group_equal_for_k_steps_in_a_row():
    k = CFG.no_signal_steps
    # A healthy start, then k - 1 steps without signal: not k in a row yet (the rise itself is
    # zero_std_groups_rising's alarm).
    almost = feed(changed(20, frac_zero_std_groups=lambda s: 1.0 if s > 21 - k else 0.2))
    assert [a.name for a in almost] == ["zero_std_groups_rising"]
    # The same with one more: fires at the run's last step; rewards of 1 in every group.
    equal = {"frac_zero_std_groups": lambda s: 1.0 if s > 20 - k else 0.2, "reward/total/mean": lambda s: 1.0}
    _, alarm = feed(changed(20, **equal))
    assert (alarm.name, alarm.step, alarm.severity) == ("no_learning_signal", 20, "critical")
    assert "every group's rewards were equal for the last 10 steps" in alarm.message
    (alarm,) = feed(FAILING["no_learning_signal"])
    assert "every reward was 0 for the last 10 steps" in alarm.message and "cold-start SFT" in alarm.message
    # Fewer steps are enough when asked for.
    assert [a.step for a in feed(FAILING["no_learning_signal"], MonitorSection(no_signal_steps=3))] == [3]


def test_no_signal_steps_cannot_exceed_the_window():
    with pytest.raises(ValueError, match="no_signal_steps"):
        MonitorSection(window=5, min_steps=3, no_signal_steps=8)


def test_expert_collapse_needs_min_steps_in_a_row_above_the_threshold():
    # monitor.expert_load_max 4 and min_steps 6: five steps at 8x then one at 3.9x stay quiet;
    # six in a row above 4x fire once, at the sixth.
    spikes = lambda s: 8.0 if 10 <= s < 15 else 3.9 if s == 15 else 1.5  # noqa: E731
    assert feed(changed(30, **{"moe/load_max_over_mean": spikes})) == []
    (alarm,) = feed(changed(30, **{"moe/load_max_over_mean": lambda s: 8.0 if s >= 10 else 1.5}))
    assert (alarm.step, alarm.name, alarm.severity) == (15, "expert_collapse", "critical")
    assert "8.0x the mean expert load for 6 steps" in alarm.message


def test_dead_experts_fire_when_the_count_becomes_positive_and_again_after_recovery():
    counts = {5: 1.0, 6: 3.0, 9: 1.0}
    alarms = feed([{"moe/dead_experts": counts.get(s, 0.0)} for s in range(1, 13)])
    assert [(a.step, a.name) for a in alarms] == [(5, "dead_experts"), (9, "dead_experts")]
    assert alarms[0].message.startswith("1 (layer, expert) pairs received no token in the last 20 steps")


def test_dense_runs_have_no_moe_metrics_and_no_moe_alarms():
    records = [{k: v for k, v in r.items() if not k.startswith("moe/")} for r in changed(40)]
    assert feed(records) == []
