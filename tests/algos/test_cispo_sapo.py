"""CISPO and SAPO against hand-derived values and gradients (one sequence, ratios on valid tokens, a pad)."""

import math

import pytest
import torch
from torch.testing import assert_close

from vlrl.algos import POLICY_LOSSES, LossConfig, aggregate
from vlrl.config import AlgoSection

MASK = torch.tensor([[True, True, True, False]])
F64 = torch.float64


def _inputs(ratios, pad_logp=50.0):
    """logp = ln(ratio) on the valid tokens with old_logp 0, so r_t = ratio_t; a wild padded log-prob."""
    logp = torch.tensor([[*map(math.log, ratios), pad_logp]], dtype=F64, requires_grad=True)
    return logp, torch.zeros(1, len(ratios) + 1, dtype=F64)


def _t(*values):
    return torch.tensor([list(values)], dtype=F64)


def test_cispo_truncates_the_weight_but_keeps_every_gradient():
    # cispo_clip_high 3 -> weight = min(r, 4), no lower bound (MiniMax-M1). A = +1, loss = -sg(w) A logp:
    #   r=0.5: w=0.5, logp=-0.693147 -> loss  0.346574, d/dlogp = -w A = -0.5
    #   r=1.0: w=1,   logp=0         -> loss  0,        d/dlogp = -1
    #   r=5.0: w=4 (truncated), logp=1.609438 -> loss -6.437752, d/dlogp = -4
    #          (ppo_clip would give this token no gradient at all: r > 1 + clip_high)
    logp, old = _inputs([0.5, 1.0, 5.0])
    loss, m = POLICY_LOSSES["cispo"](logp, old, torch.tensor([1.0], dtype=F64), MASK, LossConfig())
    assert loss.shape == (1, 4)
    assert_close(loss, _t(0.346574, 0.0, -6.437752, 0.0), atol=1e-6, rtol=0)
    loss.sum().backward()
    assert_close(logp.grad, _t(-0.5, -1.0, -4.0, 0.0))  # the weight is a constant: no d w / d logp term
    assert_close(m["clip_frac"], torch.tensor(1 / 3, dtype=F64))
    assert_close(m["ratio_mean"], torch.tensor(6.5 / 3, dtype=F64))  # (0.5 + 1 + 5) / 3


def test_cispo_lower_bound_and_negative_advantage():
    # cispo_clip_low 0.2 -> weight in [0.8, 4]; A = -2: d/dlogp = -w A = 2 w
    #   r=0.5 -> w=0.8 (raised): grad 1.6, loss = 0.8 * 2 * (-0.693147) = -1.109035
    #   r=1.0 -> w=1: grad 2, loss 0;  r=5.0 -> w=4: grad 8, loss = 4 * 2 * 1.609438 = 12.875503
    cfg = LossConfig(cispo_clip_low=0.2, cispo_clip_high=3.0)
    logp, old = _inputs([0.5, 1.0, 5.0])
    loss, m = POLICY_LOSSES["cispo"](logp, old, torch.tensor([-2.0], dtype=F64), MASK, cfg)
    assert_close(loss, _t(-1.109035, 0.0, 12.875503, 0.0), atol=1e-6, rtol=0)
    loss.sum().backward()
    assert_close(logp.grad, _t(1.6, 2.0, 8.0, 0.0))
    assert_close(m["clip_frac"], torch.tensor(2 / 3, dtype=F64))


def test_cispo_on_policy_gradient_is_reinforce():
    # ratio 1 (the ppo_epochs = 1 case): CISPO's gradient is REINFORCE's, -A per token.
    logp = torch.tensor([[-1.0, -2.0, 9.0]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    loss, m = POLICY_LOSSES["cispo"](logp, logp.detach(), torch.tensor([2.0], dtype=F64), mask, LossConfig())
    assert_close(loss, _t(2.0, 4.0, 0.0))
    loss.sum().backward()
    assert_close(logp.grad, _t(-2.0, -2.0, 0.0))
    assert m["clip_frac"].item() == 0.0


def test_sapo_positive_advantage_soft_gate():
    # tau_pos = 1, A = +1: loss = -(4/tau) sigmoid(tau (r - 1)) A; d/dlogp = -A 4 s (1 - s) r, s = sigmoid(.)
    #   r=0.5: s = sigmoid(-0.5) = 0.377541 -> loss -1.510163; grad -4 (0.377541)(0.622459)(0.5) = -0.470007
    #   r=1.0: s = 0.5 -> loss -2;          grad -4 (0.25)(1) = -1: the plain policy gradient at r = 1
    #   r=2.0: s = sigmoid(1) = 0.731059 -> loss -2.924234; grad -4 (0.731059)(0.268941)(2) = -1.572895
    #          (smaller than the unclipped -r A = -2, but not 0 as ppo_clip's hard clip would give)
    logp, old = _inputs([0.5, 1.0, 2.0])
    loss, m = POLICY_LOSSES["sapo"](logp, old, torch.tensor([1.0], dtype=F64), MASK, LossConfig())
    assert_close(loss, _t(-1.510163, -2.0, -2.924234, 0.0), atol=1e-6, rtol=0)
    loss.sum().backward()
    assert_close(logp.grad, _t(-0.470007, -1.0, -1.572895, 0.0), atol=1e-6, rtol=0)
    assert m["clip_frac"].item() == 0.0
    assert_close(m["ratio_mean"], torch.tensor(3.5 / 3, dtype=F64))


def test_sapo_negative_advantage_uses_tau_neg():
    # tau_neg = 1.05, A = -1: loss = (4/1.05) sigmoid(1.05 (r - 1)); d/dlogp = 4 s (1 - s) r
    #   r=0.5: s = sigmoid(-0.525) = 0.371686 -> loss 1.415938; grad 4 (0.371686)(0.628314)(0.5) = 0.467070
    #   r=1.0: s = 0.5 -> loss 4/1.05 * 0.5 = 1.904762; grad 1 (on-policy: the plain gradient again)
    #   r=2.0: s = sigmoid(1.05) = 0.740775 -> loss 2.822000; grad 4 (0.740775)(0.259225)(2) = 1.536220
    logp, old = _inputs([0.5, 1.0, 2.0])
    loss, _ = POLICY_LOSSES["sapo"](logp, old, torch.tensor([-1.0], dtype=F64), MASK, LossConfig())
    assert_close(loss, _t(1.415938, 1.904762, 2.822000, 0.0), atol=1e-6, rtol=0)
    loss.sum().backward()
    assert_close(logp.grad, _t(0.467070, 1.0, 1.536220, 0.0), atol=1e-6, rtol=0)


def test_sapo_gate_decays_faster_for_negative_advantages():
    # The same |A| and ratio 2: the negative-advantage gate (larger tau) gives a smaller gradient
    # weight w = 4 s (1 - s): tau 1 -> 0.786448, tau 2 -> 4 sigmoid(2)(1 - sigmoid(2)) = 0.419974.
    cfg = LossConfig(sapo_tau_pos=1.0, sapo_tau_neg=2.0)
    grads = []
    for adv in (1.0, -1.0):
        logp = torch.tensor([[math.log(2.0)]], dtype=F64, requires_grad=True)
        loss, _ = POLICY_LOSSES["sapo"](
            logp, torch.zeros(1, 1, dtype=F64), torch.tensor([adv], dtype=F64), torch.tensor([[1]]), cfg
        )
        loss.sum().backward()
        grads.append(abs(logp.grad.item()) / 2.0)  # / r
    assert grads == pytest.approx([0.786448, 0.419974], abs=1e-6)


@pytest.mark.parametrize("name", ["cispo", "sapo"])
def test_on_policy_gradient_equals_ppo_clip(name):
    # At r = 1 (the first update of a step) every loss must give the policy gradient -A grad logp.
    g = torch.Generator().manual_seed(3)
    logp0 = torch.randn(3, 4, generator=g, dtype=F64)
    adv = torch.tensor([1.5, -0.5, 0.7], dtype=F64)
    mask = torch.arange(4)[None, :] < torch.tensor([4, 2, 3])[:, None]
    grads = []
    for loss_name in (name, "ppo_clip"):
        logp = logp0.clone().requires_grad_(True)
        loss, _ = POLICY_LOSSES[loss_name](logp, logp0, adv, mask, LossConfig())
        aggregate(loss, mask, "seq_mean_token_mean").backward()
        grads.append(logp.grad)
    assert_close(grads[0], grads[1])


def test_the_configured_bounds_and_temperatures_reach_the_loss():
    algo = AlgoSection(
        policy_loss="cispo", cispo_clip_low=0.5, cispo_clip_high=1.0, sapo_tau_pos=0.5, sapo_tau_neg=3.0
    )
    cfg = LossConfig.from_config(algo)
    assert (cfg.cispo_clip_low, cfg.cispo_clip_high, cfg.sapo_tau_pos, cfg.sapo_tau_neg) == (
        0.5,
        1.0,
        0.5,
        3.0,
    )
    # weights clip(r, 0.5, 2): r = 0.25 -> 0.5, r = 3 -> 2; A = 1 -> grads -0.5, -2
    logp = torch.tensor([[math.log(0.25), math.log(3.0)]], dtype=F64, requires_grad=True)
    loss, _ = POLICY_LOSSES["cispo"](
        logp, torch.zeros(1, 2, dtype=F64), torch.tensor([1.0], dtype=F64), torch.tensor([[1, 1]]), cfg
    )
    loss.sum().backward()
    assert_close(logp.grad, _t(-0.5, -2.0))
    defaults = LossConfig.from_config(AlgoSection())
    assert (defaults.cispo_clip_low, defaults.cispo_clip_high) == (None, 3.0)  # MiniMax-M1: no lower bound
    assert (defaults.sapo_tau_pos, defaults.sapo_tau_neg) == (1.0, 1.05)  # the SAPO paper's


@pytest.mark.parametrize(
    "kwargs",
    [{"cispo_clip_low": 1.5}, {"cispo_clip_high": -1.0}, {"sapo_tau_pos": 0.0}, {"sapo_tau_neg": -1.0}],
)
def test_loss_config_rejects_bad_cispo_sapo_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LossConfig(**kwargs)
