"""Policy losses against hand-derived numbers: clipping on each side, both advantage signs, GSPO."""

import math

import pytest
import torch
from torch.testing import assert_close

from vlrl.algos import POLICY_LOSSES, LossConfig, aggregate
from vlrl.config import AlgoSection

CFG = LossConfig(clip_low=0.2, clip_high=0.28)  # ratio kept in [0.8, 1.28]
# one sequence, ratios [0.5, 1.0, 1.5] on valid tokens, then a padded token with a wild log-prob
RATIOS = [0.5, 1.0, 1.5]
MASK = torch.tensor([[True, True, True, False]])


def _inputs(ratios=RATIOS, pad_logp=50.0):
    logp = torch.tensor([[*map(math.log, ratios), pad_logp]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, len(ratios) + 1, dtype=torch.float64)
    return logp, old


def test_ppo_clip_positive_advantage_clips_high_side():
    # A = +1: loss = max(-r, -clip(r)):
    #   r=0.5: max(-0.5, -0.8) = -0.5 (unclipped; low clip inactive for A > 0)  d/dlogp = -r = -0.5
    #   r=1.0: -1.0                                                              d/dlogp = -1.0
    #   r=1.5: max(-1.5, -1.28) = -1.28 (clipped high)                           d/dlogp = 0
    logp, old = _inputs()
    loss, m = POLICY_LOSSES["ppo_clip"](logp, old, torch.tensor([1.0], dtype=torch.float64), MASK, CFG)
    assert loss.shape == (1, 4)
    assert_close(loss, torch.tensor([[-0.5, -1.0, -1.28, 0.0]], dtype=torch.float64))
    loss.sum().backward()
    assert_close(logp.grad, torch.tensor([[-0.5, -1.0, 0.0, 0.0]], dtype=torch.float64))
    assert_close(m["clip_frac"], torch.tensor(1 / 3, dtype=torch.float64))
    assert_close(m["ratio_mean"], torch.tensor(1.0, dtype=torch.float64))  # (0.5 + 1 + 1.5) / 3; pad ignored
    # approx_kl = mean(old - logp) = -(ln .5 + 0 + ln 1.5)/3 = -(-0.693147 + 0.405465)/3 = 0.095894
    assert_close(m["approx_kl"], torch.tensor(0.095894, dtype=torch.float64), atol=1e-6, rtol=0)


def test_ppo_clip_negative_advantage_clips_low_side():
    # A = -1: loss = max(r, clip(r)):
    #   r=0.5: max(0.5, 0.8) = 0.8 (clipped low)   grad 0
    #   r=1.0: 1.0                                  grad r = 1.0
    #   r=1.5: max(1.5, 1.28) = 1.5 (unclipped)     grad r = 1.5
    logp, old = _inputs()
    loss, m = POLICY_LOSSES["ppo_clip"](logp, old, torch.tensor([-1.0], dtype=torch.float64), MASK, CFG)
    assert_close(loss, torch.tensor([[0.8, 1.0, 1.5, 0.0]], dtype=torch.float64))
    loss.sum().backward()
    assert_close(logp.grad, torch.tensor([[0.0, 1.0, 1.5, 0.0]], dtype=torch.float64))
    assert_close(m["clip_frac"], torch.tensor(1 / 3, dtype=torch.float64))


def test_ppo_dual_clip_caps_negative_advantage():
    # c = 3, A = -2: r=2 -> max(4, 2.56) = 4 < cap 6 -> 4 (grad r*2 = 4); r=4 -> 8 > 6 -> 6 (grad 0)
    # A = +2 is never dual-clipped: r=4 -> max(-8, -2.56) = -2.56
    cfg = LossConfig(clip_low=0.2, clip_high=0.28, clip_ratio_c=3.0)
    logp, old = _inputs([2.0, 4.0, 1.0])
    loss, m = POLICY_LOSSES["ppo_clip"](logp, old, torch.tensor([-2.0], dtype=torch.float64), MASK, cfg)
    assert_close(loss, torch.tensor([[4.0, 6.0, 2.0, 0.0]], dtype=torch.float64))
    loss.sum().backward()
    assert_close(logp.grad, torch.tensor([[4.0, 0.0, 2.0, 0.0]], dtype=torch.float64))
    assert_close(m["clip_frac"], torch.tensor(1 / 3, dtype=torch.float64))
    logp, old = _inputs([2.0, 4.0, 1.0])
    loss, _ = POLICY_LOSSES["ppo_clip"](logp, old, torch.tensor([2.0], dtype=torch.float64), MASK, cfg)
    assert_close(loss, torch.tensor([[-2.56, -2.56, -2.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize(
    ("dual_clip", "capped"),
    [({}, 6.0), ({"dual_clip": 2.5}, 5.0), ({"dual_clip": None}, 8.0)],
)
def test_the_configured_dual_clip_reaches_the_loss(dual_clip, capped):
    # A = -2, ratios [2, 4, 1], clip [0.8, 1.28]: r=4 -> max(8, 2.56) = 8, capped at -c * A:
    # c = 3 (verl's default, the config's) -> 6; c = 2.5 -> 5; no dual clip -> 8. r=2 gives 4 below every cap.
    cfg = LossConfig.from_config(AlgoSection(clip_low=0.2, clip_high=0.28, **dual_clip))
    logp, old = _inputs([2.0, 4.0, 1.0])
    loss, _ = POLICY_LOSSES["ppo_clip"](logp, old, torch.tensor([-2.0], dtype=torch.float64), MASK, cfg)
    assert_close(loss, torch.tensor([[4.0, capped, 2.0, 0.0]], dtype=torch.float64))


def test_gspo_sequence_ratio_and_gradient_vs_hand_computed():
    # log-ratios [0.1, 0.3] -> s = exp(0.2) = 1.221403 on both tokens. Wide clip, A = +1, seq_mean_token_mean:
    # objective -s; d(-s)/dlogp_t = -s / |y| = -0.610701 on BOTH tokens (token-level PPO would give
    # -e^0.1/2 = -0.552585 and -e^0.3/2 = -0.674929).
    logp = torch.tensor([[0.1, 0.3, 7.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    wide = LossConfig(clip_low=0.5, clip_high=0.5)
    loss, m = POLICY_LOSSES["gspo"](logp, old, torch.tensor([1.0], dtype=torch.float64), mask, wide)
    assert_close(loss, torch.tensor([[-1.221403, -1.221403, 0.0]], dtype=torch.float64), atol=1e-6, rtol=0)
    assert_close(m["ratio_mean"], torch.tensor(1.221403, dtype=torch.float64), atol=1e-6, rtol=0)
    aggregate(loss, mask, "seq_mean_token_mean").backward()
    assert_close(
        logp.grad, torch.tensor([[-0.610701, -0.610701, 0.0]], dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_gspo_paper_clip_range():
    # paper range [1 - 3e-4, 1 + 4e-4]; s = 1.221403:
    #   A = +1: max(-s, -1.0004) = -1.0004, clipped, zero gradient
    #   A = -1: max(s, 1.0004) = s, unclipped, gradient +s/2 = 0.610701 per token
    cfg = LossConfig(clip_low=3e-4, clip_high=4e-4)
    mask = torch.tensor([[1, 1]])
    for adv, value, grad, frac in [(1.0, -1.0004, 0.0, 1.0), (-1.0, 1.221403, 0.610701, 0.0)]:
        logp = torch.tensor([[0.1, 0.3]], dtype=torch.float64, requires_grad=True)
        loss, m = POLICY_LOSSES["gspo"](
            logp, torch.zeros(1, 2, dtype=torch.float64), torch.tensor([adv], dtype=torch.float64), mask, cfg
        )
        assert_close(loss, torch.full((1, 2), value, dtype=torch.float64), atol=1e-6, rtol=0)
        aggregate(loss, mask, "seq_mean_token_mean").backward()
        assert_close(logp.grad, torch.full((1, 2), grad, dtype=torch.float64), atol=1e-6, rtol=0)
        assert m["clip_frac"].item() == frac


def test_gspo_gradient_equals_paper_sequence_objective():
    # Random batch, unequal lengths, no clipping: grad of seq_mean_token_mean(gspo loss) must equal
    # grad of the paper's J = -(1/G) sum_i s_i A_i with s_i = exp(mean_t(logp - old)) computed directly.
    g = torch.Generator().manual_seed(0)
    logp0 = torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.1
    old = logp0 + torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.05
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=torch.float64)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 3, 1, 4])[:, None]
    wide = LossConfig(clip_low=0.9, clip_high=10.0)

    a = logp0.clone().requires_grad_(True)
    loss, _ = POLICY_LOSSES["gspo"](a, old, adv, mask, wide)
    aggregate(loss, mask, "seq_mean_token_mean").backward()

    b = logp0.clone().requires_grad_(True)
    m = mask.double()
    s = (((b - old) * m).sum(-1) / m.sum(-1)).exp()
    (-(s * adv).mean()).backward()
    assert_close(a.grad, b.grad)


def test_reinforce_is_minus_advantage_times_logp():
    # A = 2, logp = [-1, -2, pad]: loss = [2, 4, 0]; grad = -A = -2 on valid tokens; no clipping
    logp = torch.tensor([[-1.0, -2.0, 9.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, m = POLICY_LOSSES["reinforce"](logp, old, torch.tensor([2.0]), mask, CFG)
    assert_close(loss, torch.tensor([[2.0, 4.0, 0.0]]))
    loss.sum().backward()
    assert_close(logp.grad, torch.tensor([[-2.0, -2.0, 0.0]]))
    # metrics from old_logp: ratios [1, e^-1] -> mean (1 + 0.367879)/2 = 0.683940
    assert m["clip_frac"].item() == 0.0
    assert_close(m["ratio_mean"], torch.tensor(0.683940), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_uniform_signature_shapes_and_masked_zero(name):
    g = torch.Generator().manual_seed(1)
    logp = torch.randn(3, 5, generator=g).requires_grad_(True)
    old = torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    loss, metrics = POLICY_LOSSES[name](logp, old, torch.tensor([1.0, -1.0, 0.5]), mask, LossConfig())
    assert loss.shape == (3, 5)  # no accidental broadcasting
    assert torch.isfinite(loss).all() and (loss[~mask] == 0).all()
    assert set(metrics) == {"clip_frac", "ratio_mean", "approx_kl"}
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    aggregate(loss, mask, "token_mean").backward()
    assert (logp.grad[~mask] == 0).all() and torch.isfinite(logp.grad).all()


@pytest.mark.parametrize(
    "kwargs", [{"clip_low": 1.0}, {"clip_low": -0.1}, {"clip_high": -0.1}, {"clip_ratio_c": 1.0}]
)
def test_loss_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LossConfig(**kwargs)
