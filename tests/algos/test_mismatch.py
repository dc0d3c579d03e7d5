"""Rollout/training mismatch corrections (TIS / MIS, token and sequence level) against hand-derived numbers.

Two rows: rho_t = pi_old / pi_behaviour = [3, 0.4, 1.5] (product 1.8) and [e^0.1, e^-0.3] (product
e^-0.2 = 0.818731), then padding holding wild log-probs.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from vlrl.algos import MISMATCH_CORRECTIONS, MismatchConfig, get
from vlrl.config import AlgoSection

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
E1, EM3 = math.exp(0.1), math.exp(-0.3)  # 1.105171, 0.740818


def _inputs():
    log_rho = torch.tensor([[math.log(3), math.log(0.4), math.log(1.5), 0.0], [0.1, -0.3, 0.0, 0.0]])
    behaviour = torch.tensor([[-1.0, -2.0, -0.5, 40.0], [-0.3, -0.7, -30.0, 7.0]])  # pads: anything finite
    old = (behaviour + log_rho).requires_grad_(True)  # the training side may carry a graph: never used
    return old, behaviour


def _run(name, **cfg):
    old, behaviour = _inputs()
    weight, metrics = MISMATCH_CORRECTIONS[name](old, behaviour, MASK, MismatchConfig(**cfg))
    assert weight.shape == (2, 4) and not weight.requires_grad  # a constant factor on the loss
    assert set(metrics) == {
        "log_ratio_mean_abs",
        "log_ratio_max_abs",
        "kl",
        "weight_mean",
        "clipped_frac",
        "masked_frac",
    }
    return weight, {k: v.item() for k, v in metrics.items()}


def test_none_weights_one_and_measures_the_mismatch():
    weight, m = _run("none")
    assert_close(weight, MASK.float())
    # mean |log rho| = (1.098612 + 0.916291 + 0.405465 + 0.1 + 0.3) / 5 = 0.564074; max = ln 3
    assert m["log_ratio_mean_abs"] == pytest.approx(0.564074, abs=1e-6)
    assert m["log_ratio_max_abs"] == pytest.approx(math.log(3), abs=1e-6)
    # KL(behaviour || training), k3 = rho - 1 - ln rho per token:
    # 0.901388 + 0.316291 + 0.094535 + 0.005171 + 0.040818 = 1.358203, / 5 = 0.271641
    assert m["kl"] == pytest.approx(0.271641, abs=1e-6)
    assert (m["weight_mean"], m["clipped_frac"], m["masked_frac"]) == (1.0, 0.0, 0.0)


def test_tis_token_truncates_each_token_at_c():
    # C = 2: min(rho_t, 2) = [2 (clipped), 0.4, 1.5], [1.105171, 0.740818]; 1 of 5 tokens clipped
    weight, m = _run("tis_token", upper=2.0)
    assert_close(weight, torch.tensor([[2.0, 0.4, 1.5, 0.0], [E1, EM3, 0.0, 0.0]]))
    assert m["clipped_frac"] == pytest.approx(0.2) and m["masked_frac"] == 0.0
    assert m["weight_mean"] == pytest.approx((2.0 + 0.4 + 1.5 + E1 + EM3) / 5, abs=1e-6)  # 1.149198


def test_tis_seq_truncates_the_product_per_sequence():
    # products 1.8 and 0.818731; C = 1.6 -> row 0's three tokens get 1.6 (clipped), row 1's 0.818731
    weight, m = _run("tis_seq", upper=1.6)
    assert_close(weight, torch.tensor([[1.6, 1.6, 1.6, 0.0], [0.818731, 0.818731, 0.0, 0.0]]))
    assert m["clipped_frac"] == pytest.approx(0.6)
    # C = 2: nothing clipped, the products themselves
    weight, m = _run("tis_seq", upper=2.0)
    assert_close(weight, torch.tensor([[1.8, 1.8, 1.8, 0.0], [0.818731, 0.818731, 0.0, 0.0]]))
    assert m["clipped_frac"] == 0.0


def test_mis_token_drops_tokens_outside_the_band():
    # [1/C, C] = [0.5, 2]: rho 3 (above) and 0.4 (below) drop; the rest keep their weight rho_t
    weight, m = _run("mis_token", upper=2.0)
    assert_close(weight, torch.tensor([[0.0, 0.0, 1.5, 0.0], [E1, EM3, 0.0, 0.0]]))
    assert m["masked_frac"] == pytest.approx(0.4) and m["clipped_frac"] == 0.0
    # an explicit lower bound 0.3 keeps 0.4; C = 4 keeps 3: nothing drops
    weight, m = _run("mis_token", upper=4.0, lower=0.3)
    assert_close(weight, torch.tensor([[3.0, 0.4, 1.5, 0.0], [E1, EM3, 0.0, 0.0]]))
    assert m["masked_frac"] == 0.0


def test_mis_seq_drops_whole_sequences():
    # C = 2, lower 0.5: both products inside, every token weighted by its sequence's rho
    weight, m = _run("mis_seq", upper=2.0)
    assert_close(weight, torch.tensor([[1.8, 1.8, 1.8, 0.0], [0.818731, 0.818731, 0.0, 0.0]]))
    assert m["masked_frac"] == 0.0
    # C = 1.6: row 0 (1.8) drops, 3 of 5 tokens; lower 0.9: row 1 (0.818731) drops too
    weight, m = _run("mis_seq", upper=1.6)
    assert_close(weight, torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.818731, 0.818731, 0.0, 0.0]]))
    assert m["masked_frac"] == pytest.approx(0.6)
    weight, m = _run("mis_seq", upper=1.6, lower=0.9)
    assert_close(weight, torch.zeros(2, 4))
    assert m["masked_frac"] == 1.0 and m["weight_mean"] == 0.0


@pytest.mark.parametrize("name", sorted(MISMATCH_CORRECTIONS))
def test_no_mismatch_means_weight_one_and_zero_metrics(name):
    # the hf backend's case: the sampler is the training model, rho = 1 on every token
    behaviour = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    weight, m = MISMATCH_CORRECTIONS[name](behaviour.clone(), behaviour, MASK, MismatchConfig())
    assert_close(weight, MASK.float())
    assert all(m[k].item() == 0.0 for k in ("log_ratio_mean_abs", "log_ratio_max_abs", "kl"))


@pytest.mark.parametrize("name", sorted(MISMATCH_CORRECTIONS))
def test_huge_log_ratios_stay_finite(name):
    old = torch.tensor([[0.0, 0.0, -60.0]])
    behaviour = torch.tensor([[-80.0, 0.0, 0.0]])  # rho = e^80 and e^-60 on single tokens, e^20 per sequence
    weight, m = MISMATCH_CORRECTIONS[name](
        old, behaviour, torch.ones(1, 3, dtype=torch.bool), MismatchConfig()
    )
    assert torch.isfinite(weight).all() and all(math.isfinite(v.item()) for v in m.values())


def test_loss_times_weight_scales_each_tokens_gradient():
    # The trainer multiplies each token's policy loss by the weight: the gradient scales with it.
    logp = torch.zeros(1, 3, requires_grad=True)
    weight, _ = MISMATCH_CORRECTIONS["tis_token"](
        torch.zeros(1, 3), torch.log(torch.tensor([[0.25, 1.0, 2.0]])), torch.ones(1, 3), MismatchConfig()
    )  # rho = [4, 1, 0.5] -> weight [2, 1, 0.5]
    (-logp * weight).sum().backward()
    assert_close(logp.grad, torch.tensor([[-2.0, -1.0, -0.5]]))


def test_config_thresholds_reach_the_table_and_bad_ones_are_refused():
    cfg = MismatchConfig.from_config(AlgoSection(rollout_is_threshold=3.0, rollout_is_threshold_lower=0.2))
    assert (cfg.upper, cfg.low) == (3.0, 0.2)
    assert MismatchConfig.from_config(AlgoSection()).low == 0.5  # default: 1 / 2
    assert (
        get(MISMATCH_CORRECTIONS, AlgoSection().rollout_correction, "rollout correction")
        is (MISMATCH_CORRECTIONS["none"])
    )
    with pytest.raises(ValueError, match="upper"):
        MismatchConfig(upper=1.0)
    with pytest.raises(ValueError, match="lower"):
        MismatchConfig(lower=1.5)
