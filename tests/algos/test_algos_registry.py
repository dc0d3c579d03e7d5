"""Unknown names fail with a message listing the valid ones, for every table."""

import pytest
import torch

from vlrl.algos import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, aggregate, get


def test_unknown_advantage_lists_valid_names():
    msg = "unknown advantage 'grpoo'; valid: dr_grpo, grpo, reinforce_pp, reinforce_pp_baseline, rloo"
    with pytest.raises(ValueError) as err:
        get(ADVANTAGES, "grpoo", "advantage")
    assert str(err.value) == msg


@pytest.mark.parametrize(
    ("table", "kind"),
    [(POLICY_LOSSES, "policy loss"), (AGGREGATIONS, "aggregation"), (KL_ESTIMATORS, "KL estimator")],
)
def test_unknown_names_in_every_table(table, kind):
    with pytest.raises(ValueError, match=f"unknown {kind} 'nope'; valid: " + ", ".join(sorted(table))):
        get(table, "nope", kind)


def test_known_name_returns_entry_and_aggregate_checks_mode():
    assert get(KL_ESTIMATORS, "k3", "KL estimator") is KL_ESTIMATORS["k3"]
    with pytest.raises(ValueError, match="unknown aggregation 'token_sum'; valid: seq_mean_token_mean"):
        aggregate(torch.ones(1, 2), torch.ones(1, 2), "token_sum")
