"""Unknown names fail with a message listing the valid ones, for every table."""

import typing

import pytest
import torch

from vlrl.algos import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_ESTIMATORS,
    MISMATCH_CORRECTIONS,
    POLICY_LOSSES,
    aggregate,
    get,
)
from vlrl.config import AlgoSection
from vlrl.config.sections import GROUP_RELATIVE_ADVANTAGES


def test_unknown_advantage_lists_valid_names():
    msg = "unknown advantage 'grpoo'; valid: dr_grpo, grpo, reinforce_pp, reinforce_pp_baseline, rloo"
    with pytest.raises(ValueError) as err:
        get(ADVANTAGES, "grpoo", "advantage")
    assert str(err.value) == msg


@pytest.mark.parametrize(
    ("table", "kind"),
    [
        (POLICY_LOSSES, "policy loss"),
        (AGGREGATIONS, "aggregation"),
        (KL_ESTIMATORS, "KL estimator"),
        (MISMATCH_CORRECTIONS, "rollout correction"),
    ],
)
def test_unknown_names_in_every_table(table, kind):
    with pytest.raises(ValueError, match=f"unknown {kind} 'nope'; valid: " + ", ".join(sorted(table))):
        get(table, "nope", kind)


def test_known_name_returns_entry_and_aggregate_checks_mode():
    assert get(KL_ESTIMATORS, "k3", "KL estimator") is KL_ESTIMATORS["k3"]
    with pytest.raises(ValueError, match="unknown aggregation 'token_sum'; valid: seq_mean_token_mean"):
        aggregate(torch.ones(1, 2), torch.ones(1, 2), "token_sum")


@pytest.mark.parametrize(
    ("field", "table"),
    [
        ("advantage", ADVANTAGES),
        ("policy_loss", POLICY_LOSSES),
        ("loss_agg", AGGREGATIONS),
        ("kl_estimator", KL_ESTIMATORS),
        ("rollout_correction", MISMATCH_CORRECTIONS),
    ],
)
def test_config_names_are_exactly_the_table_names(field, table):
    """The config spells the names (it may not import algos): a new entry must be added to both."""
    assert set(typing.get_args(AlgoSection.model_fields[field].annotation)) == set(table)


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_group_relative_estimators_are_those_with_nothing_to_learn_from_one_sample(name):
    """config refuses group_size 1 exactly for the estimators whose G = 1 advantages are all 0 (or fail)."""
    rewards = torch.tensor([[1.0], [0.0], [3.0]])  # P = 3 prompts, G = 1, rewards differ across prompts
    try:
        learns = bool(ADVANTAGES[name](rewards).abs().sum() > 0)
    except ValueError:
        learns = False
    assert learns == (name not in GROUP_RELATIVE_ADVANTAGES)
