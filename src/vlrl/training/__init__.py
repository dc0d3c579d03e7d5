"""Training runs: the GRPO-family RL loop and cold-start SFT, with what both share.

    trainer = GRPOTrainer(cfg)   # or SFTTrainer(cfg): loads model, data, optimizer; resumes
    history = trainer.train()    # [{"step": 1, "reward/total/mean": ..., ...}, ...]

- `run`: `TrainingRun`, the shared machinery (setup, precision, gradient steps, evaluation,
  checkpoints, signals); `grpo` and `sft` add their own step.
- `setup`, `sampler`, `schedule`, `stages`: model / data / optimizer loading, the resumable prompt
  order, learning-rate schedules, curricula.
- `logprobs`, `scoring`: response log-probs and micro-batching, rewards of a batch.
- `checkpoint`, `guards`, `metrics`: save / resume / merge, what stops a run early, logging.

The trainers are imported on first use, so that `vlrl.training.checkpoint` or `.guards` load
without the RL loop.
"""

from vlrl.lazy import lazy_exports

# Public name -> module defining it.
_EXPORTS = {
    "GRPOTrainer": "vlrl.training.grpo",
    "SFTTrainer": "vlrl.training.sft",
    "TrainingRun": "vlrl.training.run",
    "merge_lora": "vlrl.training.checkpoint",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
