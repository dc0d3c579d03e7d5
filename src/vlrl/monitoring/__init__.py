"""Watching a run while it trains: MAYE's training dynamics, answer health, alarms and the
rollout dump that `vlrl report` shows.

The trainer calls, per logged step (import from the modules, so that `vlrl report` loads no
reward code):

    metrics |= dynamics.dynamics_metrics(texts, correct, lengths, cfg.monitor.reflection_words)
    metrics |= answers.answer_health(texts)
    new = monitor.update(step, metrics)              # monitor = alarms.AlarmMonitor(cfg.monitor)
    alarms.append_alarms(out / vlrl.io.ALARMS_FILE, new)
    rollouts.write_rollouts(out / vlrl.io.ROLLOUTS_FILE, [rollouts.rollout_record(...), ...])
"""
