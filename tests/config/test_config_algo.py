"""Algorithm settings are checked when the config loads, not at step 1 after loading the model:
names against the tables, and the combinations whose maths would be silently wrong."""

import pytest

from vlrl.config import ConfigError, apply_stage, load_config

REQUIRED = ["model.path=/ckpt", "data.train=train.jsonl"]


def error_of(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, [*REQUIRED, *overrides])
    return str(info.value)


def test_misspelt_advantage_is_refused_at_load_with_a_suggestion():
    assert error_of("algo.advantage=grpoo") == (
        "override 'algo.advantage=grpoo': algo.advantage: Input should be 'grpo', 'dr_grpo', 'rloo',"
        " 'reinforce_pp' or 'reinforce_pp_baseline' (got 'grpoo'; did you mean 'grpo'?)"
    )


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("algo.policy_loss=ppo_clp", "ppo_clip"),
        ("algo.policy_loss=gpso", "gspo"),
        ("algo.kl_estimator=k33", "k3"),
        ("algo.loss_agg=seq_mean_token_man", "seq_mean_token_mean"),
    ],
)
def test_every_algorithm_name_is_checked(override, suggestion):
    key = override.partition("=")[0]
    assert f"{key}: Input should be " in error_of(override)
    assert f"did you mean '{suggestion}'?" in error_of(override)


def test_a_far_off_name_lists_the_valid_ones_without_a_guess():
    message = error_of("algo.advantage=ppo")
    assert "Input should be 'grpo', 'dr_grpo'" in message and "did you mean" not in message


def test_a_stage_with_an_unknown_name_is_refused_at_load():
    message = error_of("stages=[{steps: 2, algo.policy_loss: ppo_clipp}]")
    assert "stages[0].algo.policy_loss: Input should be 'ppo_clip'" in message
    assert "did you mean 'ppo_clip'?" in message


def test_gspo_requires_sequence_level_aggregation():
    assert error_of("algo.policy_loss=gspo") == (
        "defaults: algo.loss_agg: must be seq_mean_token_mean with algo.policy_loss gspo"
        " (its gradient assumes it) (got 'token_mean')"
    )
    assert "algo.loss_agg: must be seq_mean_token_mean" in error_of(
        "algo.policy_loss=gspo", "algo.loss_agg=seq_mean_token_sum_norm"
    )
    cfg = load_config(None, [*REQUIRED, "algo.policy_loss=gspo", "algo.loss_agg=seq_mean_token_mean"])
    assert cfg.algo.loss_agg == "seq_mean_token_mean"


def test_a_stage_switching_to_gspo_is_checked():
    message = error_of("stages=[{steps: 2, algo.policy_loss: gspo}]")
    assert "stages[0].algo.loss_agg: must be seq_mean_token_mean with algo.policy_loss gspo" in message


def test_reinforce_is_refused_with_several_epochs():
    message = error_of("algo.policy_loss=reinforce", "algo.ppo_epochs=2")
    assert message.startswith(
        "override 'algo.ppo_epochs=2': algo.ppo_epochs: must be 1 with algo.policy_loss reinforce:"
        " it has no ratio or clip"
    )
    assert load_config(None, [*REQUIRED, "algo.policy_loss=reinforce"]).algo.ppo_epochs == 1
    assert load_config(None, [*REQUIRED, "algo.ppo_epochs=2"]).algo.ppo_epochs == 2  # ppo_clip has a ratio


@pytest.mark.parametrize("advantage", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_one_sample_per_group_is_refused_for_group_relative_estimators(advantage):
    message = error_of(f"algo.advantage={advantage}", "rollout.group_size=1")
    assert message == (
        f"override 'rollout.group_size=1': rollout.group_size: must be at least 2 with algo.advantage"
        f" {advantage}, which compares each response with the others of its group (with 1, every"
        " advantage is 0) (got 1)"
    )


def test_batch_whitened_reinforce_pp_may_sample_one_response_per_prompt():
    cfg = load_config(None, [*REQUIRED, "algo.advantage=reinforce_pp", "rollout.group_size=1"])
    assert cfg.rollout.group_size == 1


def test_a_stage_with_a_group_of_one_is_refused():
    message = error_of("stages=[{steps: 2, rollout.group_size: 4}, {steps: 2, rollout.group_size: 1}]")
    assert "stages[1].rollout.group_size: must be at least 2 with algo.advantage grpo" in message


def test_a_stage_may_switch_to_a_group_of_one_with_a_batch_estimator():
    stage = "stages=[{steps: 2, rollout.group_size: 1, algo.advantage: reinforce_pp}]"
    cfg = load_config(None, [*REQUIRED, stage])
    assert apply_stage(cfg, 0).rollout.group_size == 1


def test_the_group_size_in_force_is_the_stages_when_every_stage_sets_it():
    stages = "stages=[{steps: 2, rollout.group_size: 8}, {steps: 2, rollout.group_size: 4}]"
    cfg = load_config(None, [*REQUIRED, "rollout.group_size=1", stages])
    assert [apply_stage(cfg, i).rollout.group_size for i in range(2)] == [8, 4]
    # A stage that keeps the top-level group size of 1 is caught.
    message = error_of("rollout.group_size=1", "stages=[{steps: 2, rollout.max_new_tokens: 8}]")
    assert "stages[0].rollout.group_size: must be at least 2" in message


def test_dual_clip_defaults_to_verls_constant_and_must_exceed_one():
    assert load_config(None, REQUIRED).algo.dual_clip == 3.0
    assert load_config(None, [*REQUIRED, "algo.dual_clip=null"]).algo.dual_clip is None
    assert "algo.dual_clip: Input should be greater than 1 (got 1)" in error_of("algo.dual_clip=1")
