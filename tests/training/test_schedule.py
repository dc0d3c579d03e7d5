"""Learning-rate schedules against hand-computed multipliers."""

from __future__ import annotations

import pytest
import torch

from vlrl.training.schedule import SCHEDULES, build_scheduler


def _advance(optimizer, scheduler, n=1):
    """n training steps, in the order torch expects (optimizer first)."""
    for _ in range(n):
        optimizer.step()
        scheduler.step()


def _lrs(kind, warmup, total, min_ratio=0.0, steps=None, lr=2.0):
    """The lr of each optimizer step 0 .. steps-1 (peak lr 2.0, so multipliers are lr / 2)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = build_scheduler(optimizer, kind, warmup, total, min_ratio)
    out = []
    for _ in range(total if steps is None else steps):
        out.append(optimizer.param_groups[0]["lr"])
        _advance(optimizer, scheduler)
    return out


def test_constant_with_warmup():
    # warmup 2: multipliers 0/2, 1/2, then 1.
    assert _lrs("constant", 2, 5) == pytest.approx([0.0, 1.0, 2.0, 2.0, 2.0])


def test_linear_decays_to_min_at_total_steps():
    # warmup 1, decay over 4 steps: progress 0, 1/4, 2/4, 3/4, 1 -> 1, .75, .5, .25, 0 (then stays).
    assert _lrs("linear", 1, 5, steps=7) == pytest.approx([0.0, 2.0, 1.5, 1.0, 0.5, 0.0, 0.0])


def test_linear_with_min_ratio():
    # min 0.5: 0.5 + 0.5 * (1 - p) for p = 0, 1/2, 1 -> 1, .75, .5.
    assert _lrs("linear", 0, 2, 0.5, steps=3) == pytest.approx([2.0, 1.5, 1.0])


def test_cosine():
    # decay over 4 steps: 0.5 * (1 + cos(pi p)) for p = 0, 1/4, 1/2, 3/4, 1 -> 1, .8536, .5, .1464, 0.
    assert _lrs("cosine", 0, 4, steps=5) == pytest.approx([2.0, 1.70711, 1.0, 0.29289, 0.0], abs=1e-5)
    # min 0.2: 0.2 + 0.8 * 0.5 at the midpoint = 0.6; 0.2 at the end.
    assert _lrs("cosine", 0, 2, 0.2, steps=3) == pytest.approx([2.0, 1.2, 0.4])


def test_each_parameter_group_is_scaled_from_its_own_lr():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (1.0, 0.1)]
    optimizer = torch.optim.SGD(groups)
    _advance(optimizer, build_scheduler(optimizer, "linear", 2, 4))  # step 1 of warmup 2: x 0.5
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5, 0.05])


def test_state_round_trip():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, "cosine", 1, 10)
    _advance(optimizer, scheduler, 4)
    fresh_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh = build_scheduler(fresh_opt, "cosine", 1, 10)
    fresh.load_state_dict(scheduler.state_dict())
    _advance(optimizer, scheduler)
    _advance(fresh_opt, fresh)
    assert fresh.get_last_lr() == scheduler.get_last_lr()


def test_bad_arguments_name_the_option():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="train.lr_schedule 'step'; valid: " + ", ".join(SCHEDULES)):
        build_scheduler(optimizer, "step", 0, 10)
    with pytest.raises(ValueError, match=r"train.warmup_steps \(11\) exceeds train.steps \(10\)"):
        build_scheduler(optimizer, "linear", 11, 10)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        build_scheduler(optimizer, "linear", 0, 10, min_lr_ratio=1.5)
