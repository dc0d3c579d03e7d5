"""Advantage estimators against hand-derived numbers (shown in the comments)."""

import pytest
import torch
from torch.testing import assert_close

from vlrl.algos import ADVANTAGES

# Two prompts (P = 2), four samples each (G = 4).
R = torch.tensor([[0.0, 0.0, 0.0, 3.0], [1.0, 0.0, 0.0, 1.0]], dtype=torch.float64)


def test_grpo_hand_numbers():
    # group 1 [0,0,0,3]: mean 0.75, dev [-.75,-.75,-.75,2.25], sum sq 6.75, var (unbiased) 6.75/3 = 2.25,
    #   std 1.5 -> [-0.5, -0.5, -0.5, 1.5]
    # group 2 [1,0,0,1]: mean 0.5, dev +-0.5, var 1/3, std sqrt(1/3) = 0.57735 -> +-0.5/0.57735 = +-0.866025
    adv = ADVANTAGES["grpo"](R)
    assert adv.shape == (2, 4)
    expected = torch.tensor(
        [[-0.5, -0.5, -0.5, 1.5], [0.866025, -0.866025, -0.866025, 0.866025]], dtype=torch.float64
    )
    assert_close(adv, expected, atol=1e-5, rtol=0)


def test_dr_grpo_is_mean_centred_only():
    # r - group mean, no std: [0,0,0,3] - 0.75 ; [1,0,0,1] - 0.5
    expected = torch.tensor([[-0.75, -0.75, -0.75, 2.25], [0.5, -0.5, -0.5, 0.5]], dtype=torch.float64)
    assert_close(ADVANTAGES["dr_grpo"](R), expected)


def test_rloo_leave_one_out():
    # [0,0,0,3]: a zero sees others (0+0+3)/3 = 1 -> -1 ; the 3 sees (0+0+0)/3 = 0 -> 3
    # [1,0,0,1]: a one sees (0+0+1)/3 = 1/3 -> 2/3 ; a zero sees (1+0+1)/3 = 2/3 -> -2/3
    expected = torch.tensor([[-1.0, -1.0, -1.0, 3.0], [2 / 3, -2 / 3, -2 / 3, 2 / 3]], dtype=torch.float64)
    assert_close(ADVANTAGES["rloo"](R), expected)
    # equals G/(G-1) * (r - mean)
    assert_close(ADVANTAGES["rloo"](R), 4 / 3 * ADVANTAGES["dr_grpo"](R))


def test_reinforce_pp_batch_whitening():
    # all 8 rewards [0,0,0,3,1,0,0,1]: mean 5/8 = 0.625; dev: five zeros -0.625, the 3 -> 2.375, two ones 0.375
    # sum sq = 5*0.390625 + 5.640625 + 2*0.140625 = 7.875; var = 7.875/7 = 1.125; std = 1.0606602
    # -> 0: -0.589256, 3: 2.239171, 1: 0.353553
    z, t, o = -0.589256, 2.239171, 0.353553
    expected = torch.tensor([[z, z, z, t], [o, z, z, o]], dtype=torch.float64)
    assert_close(ADVANTAGES["reinforce_pp"](R), expected, atol=1e-5, rtol=0)  # eps 1e-6 moves the 6th decimal


def test_reinforce_pp_baseline_group_mean_then_batch_whitening():
    # after group mean: [-.75,-.75,-.75,2.25 | .5,-.5,-.5,.5]; batch mean 0; sum sq 6.75 + 1 = 7.75
    # var 7.75/7 = 1.107143, std 1.052209 -> -0.712786, 2.138357, +-0.475191
    a, b, c = -0.712786, 2.138357, 0.475191
    expected = torch.tensor([[a, a, a, b], [c, -c, -c, c]], dtype=torch.float64)
    assert_close(ADVANTAGES["reinforce_pp_baseline"](R), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(set(ADVANTAGES) - {"reinforce_pp"}))
def test_equal_rewards_in_a_group_give_zero_not_nan(name):
    r = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    adv = ADVANTAGES[name](r)
    assert adv.shape == (2, 4)
    assert torch.equal(adv, torch.zeros(2, 4))


def test_reinforce_pp_has_no_group_baseline():
    # batch [1,1,1,1 | 0,0,0,0]: mean 0.5, var 8*0.25/7 = 2/7, std 0.534522 -> +-0.935414:
    # an all-correct group still gets a positive advantage (no per-prompt baseline)
    adv = ADVANTAGES["reinforce_pp"](torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    assert_close(adv, torch.tensor([[0.935414] * 4, [-0.935414] * 4]), atol=1e-5, rtol=0)
    # a whole batch of equal rewards -> 0, not NaN
    assert torch.equal(ADVANTAGES["reinforce_pp"](torch.full((2, 4), 3.0)), torch.zeros(2, 4))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "reinforce_pp_baseline"])
def test_single_sample_group_gives_zero(name):
    # G = 1: std undefined / nothing to compare with -> defined as advantage 0
    adv = ADVANTAGES[name](torch.tensor([[0.7], [0.2]]))
    assert adv.shape == (2, 1)
    assert torch.equal(adv, torch.zeros(2, 1))


def test_reinforce_pp_single_group_of_one_sample_is_zero():
    # P*G = 1: batch std undefined -> 0; with G = 1 but P = 2 it whitens across prompts: [0.7, 0.2]
    # mean 0.45, dev +-0.25, var 0.125, std 0.353553 -> +-0.707107
    assert torch.equal(ADVANTAGES["reinforce_pp"](torch.tensor([[0.7]])), torch.zeros(1, 1))
    adv = ADVANTAGES["reinforce_pp"](torch.tensor([[0.7], [0.2]]))
    assert_close(adv, torch.tensor([[0.707107], [-0.707107]]), atol=1e-5, rtol=0)


def test_rloo_single_sample_raises():
    with pytest.raises(ValueError, match="at least 2 samples"):
        ADVANTAGES["rloo"](torch.tensor([[1.0], [0.0]]))


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_integer_rewards_promoted_and_shape_checked(name):
    adv = ADVANTAGES[name](torch.tensor([[1, 0], [0, 0]]))
    assert adv.dtype == torch.float32 and adv.shape == (2, 2)
    with pytest.raises(ValueError, match=r"\[P, G\]"):
        ADVANTAGES[name](torch.ones(4))
