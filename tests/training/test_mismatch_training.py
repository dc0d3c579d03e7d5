"""Rollout/training mismatch in a GRPO run: measured every step, and corrected when asked.

The hf backend samples with the training model itself, so its behaviour log-probs equal the
training side's and every mismatch metric is ~0. A wrapper backend then shifts each behaviour
log-prob by a known constant (a sampler that is off by exactly that much): log rho = 0.5 on every
token, so the metrics, the TIS weights and the MIS mask are known by hand.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from helpers_rl import HAS_E_REWARD, has_e_args, rl_workspace

from vlrl.config import TrainConfig, load_config
from vlrl.rollout.base import RolloutBackend
from vlrl.training.grpo import GRPOTrainer

SHIFT = 0.5  # behaviour log-prob = the training model's - SHIFT: rho = e^0.5 = 1.648721 on every token


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_models):
    return rl_workspace(tmp_path_factory.mktemp("mismatch"), HAS_E_REWARD, tiny_models["qwen2_vl"])


class ShiftedLogprobs(RolloutBackend):
    """The wrapped backend's completions, each behaviour log-prob lowered by `shift`."""

    def __init__(self, inner: RolloutBackend, shift: float):
        self.inner, self.shift = inner, shift

    def generate(self, prompts, params):
        groups = self.inner.generate(prompts, params)
        return [[replace(c, logprobs=c.logprobs - self.shift) for c in group] for group in groups]

    def sync_weights(self, model):
        self.inner.sync_weights(model)

    def __getattr__(self, name):  # anything else the trainer asks of a backend
        return getattr(self.inner, name)


def _train(ws, out, *overrides, shift: float | None = None) -> list[dict]:
    args = [*has_e_args(ws["model"], ws["data"]["train"], ws["reward"], out), "train.steps=2", *overrides]
    trainer = GRPOTrainer(load_config(None, args, schema=TrainConfig))
    if shift is not None:
        trainer.backend = ShiftedLogprobs(trainer.backend, shift)
    return trainer.train()


@pytest.mark.parametrize("epochs", [1, 2])
def test_hf_rollouts_have_no_mismatch(workspace, tmp_path, epochs):
    # epochs 1: the old log-probs are the update pass's own (ratio 1); 2: a separate no-grad pass.
    for h in _train(workspace, tmp_path, f"algo.ppo_epochs={epochs}", "algo.rollout_correction=mis_token"):
        assert h["mismatch/log_ratio_mean_abs"] < 1e-4, h
        assert h["mismatch/log_ratio_max_abs"] < 1e-4, h
        assert abs(h["mismatch/kl"]) < 1e-6, h
        assert h["mismatch/masked_frac"] == 0.0 and h["mismatch/weight_mean"] == pytest.approx(1.0, abs=1e-4)


def test_a_shifted_sampler_is_measured_even_without_correction(workspace, tmp_path):
    for h in _train(workspace, tmp_path, shift=SHIFT):
        assert h["mismatch/log_ratio_mean_abs"] == pytest.approx(SHIFT, abs=1e-4)
        assert h["mismatch/log_ratio_max_abs"] == pytest.approx(SHIFT, abs=1e-4)
        # KL(behaviour || training) by k3: e^0.5 - 0.5 - 1 = 0.148721
        assert h["mismatch/kl"] == pytest.approx(math.exp(SHIFT) - SHIFT - 1, abs=1e-4)
        assert h["mismatch/weight_mean"] == 1.0 and h["mismatch/clipped_frac"] == 0.0
        assert h["grad_norm"] > 0


def test_tis_truncates_and_mis_masks_the_shifted_tokens(workspace, tmp_path):
    # C = 1.5 < rho = 1.648721: TIS truncates every token's weight to 1.5
    tis = _train(
        workspace,
        tmp_path / "tis",
        "algo.rollout_correction=tis_token",
        "algo.rollout_is_threshold=1.5",
        shift=SHIFT,
    )
    for h in tis:
        assert h["mismatch/clipped_frac"] == pytest.approx(1.0) and h[
            "mismatch/weight_mean"
        ] == pytest.approx(1.5)
        assert h["grad_norm"] > 0
    # MIS keeps [1/1.5, 1.5]: every token is outside, masked; nothing is left to learn from
    mis = _train(
        workspace,
        tmp_path / "mis",
        "algo.rollout_correction=mis_token",
        "algo.rollout_is_threshold=1.5",
        shift=SHIFT,
    )
    for h in mis:
        assert h["mismatch/masked_frac"] == pytest.approx(1.0) and h["mismatch/weight_mean"] == 0.0
        assert h["grad_norm"] == 0.0
    # a wider band (C = 2) keeps them all, each weighted by rho
    wide = _train(workspace, tmp_path / "wide", "algo.rollout_correction=mis_token", shift=SHIFT)
    for h in wide:
        assert h["mismatch/masked_frac"] == 0.0
        assert h["mismatch/weight_mean"] == pytest.approx(math.exp(SHIFT), abs=1e-4)
