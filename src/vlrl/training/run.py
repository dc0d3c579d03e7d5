"""What every training run shares, RL or SFT: model, data, optimizer, schedule, logging, resume.

`TrainingRun` sets these up from the config sections both schemas have (model, data, train,
logging); `GRPOTrainer` and `SFTTrainer` add only their own step. A checkpoint holds the model in
Hugging Face format plus optimizer, scheduler, RNG and data position, so a resumed run continues
exactly where it stopped.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from vlrl.config import dump_config
from vlrl.evaluation.intraining import evaluate_during_training
from vlrl.monitoring.dynamics import dynamics_metrics
from vlrl.training.checkpoint import load_trainer_state, resolve_resume, save_checkpoint
from vlrl.training.metrics import MetricsLogger
from vlrl.training.sampler import PromptSampler
from vlrl.training.schedule import build_scheduler
from vlrl.training.setup import (
    build_optimizer,
    load_data,
    load_policy,
    pick_device,
    seed_everything,
    template_for,
)


class TrainingRun:
    """Shared state of a run; subclasses implement `train`."""

    def __init__(self, cfg, total_steps_fn=None):
        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        self.device = pick_device(cfg.train.device)
        seed_everything(cfg.train.seed)
        resume_dir = resolve_resume(cfg.train.resume, self.out)
        self.lm = load_policy(cfg.model, cfg.data, self.device, path=resume_dir)
        self.model, self.adapter = self.lm.model, self.lm.adapter
        self.template = template_for(cfg.data)
        self.train_samples, reports = load_data(cfg.data.train, cfg.data, self.adapter, self.template)
        self.eval_sets = {
            name: load_data([f], cfg.data, self.adapter, self.template)[0]
            for name, f in cfg.data.eval.items()
        }
        self.load_reports = [r.summary() for r in reports]
        self.total_steps = total_steps_fn(len(self.train_samples)) if total_steps_fn else cfg.train.steps
        self.sampler = PromptSampler(len(self.train_samples), cfg.data.seed, shuffle=cfg.data.shuffle)
        self.optimizer = build_optimizer(self.model, self.adapter, cfg.train, cfg.model.vision_lr)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.train.lr_schedule, cfg.train.warmup_steps, self.total_steps
        )
        self.pad_id = self.adapter.tokenizer.pad_token_id
        vocab = self.model.get_output_embeddings().weight.shape[0]
        # Scored exactly as the rollout sampled: without the tokens it can never produce.
        self.blocked_ids = torch.tensor(self.adapter.blocked_token_ids(vocab), dtype=torch.long)
        self.step = 0
        self.logger = MetricsLogger(
            self.out,
            jsonl=cfg.logging.jsonl,
            tensorboard=cfg.logging.tensorboard,
            wandb=cfg.logging.wandb,
            wandb_project=cfg.logging.wandb_project,
            config=cfg.model_dump(),
            progress=cfg.logging.progress,
            total_steps=self.total_steps,
        )
        if resume_dir is not None:
            state = load_trainer_state(resume_dir, self.optimizer, self.scheduler)
            self.step = state["step"]
            self.sampler.load_state_dict(state["sampler"])
        # A fresh run in a used folder, or a resumed one, must not keep metrics of steps it redoes.
        self.logger.truncate_after(self.step)

    def begin(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(dump_config(self.cfg))

    def precision(self):
        """Mixed-precision context for forward passes (train.autocast), or nothing."""
        dtype = self.cfg.train.autocast
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, dtype))

    def clip_gradients(self) -> float:
        max_norm = self.cfg.train.max_grad_norm or float("inf")  # 0 = measure, do not clip
        return float(
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], max_norm)
        )

    def evaluate_sets(self, backend, max_new_tokens: int, reflection_words: list[str]) -> dict[str, float]:
        """In-training evaluation of every data.eval set, with the accuracy reward's extractor:
        greedy acc / format / length, pass@k when train.eval_samples > 1, and MAYE's dynamics
        (length and reflection split by correctness) under eval/<set>/..."""
        t = self.cfg.train
        out: dict[str, float] = {}
        for name, samples in self.eval_sets.items():
            result = evaluate_during_training(
                backend,
                self.adapter,
                self.template,
                samples,
                max_new_tokens,
                n=t.eval_samples,
                k_list=t.eval_pass_k,
                benchmark=t.eval_benchmark,
                batch_size=t.eval_batch_size,
            )
            records = result.pop("records")
            dynamics = dynamics_metrics(
                [r["text"] for r in records],
                [r["correct"] for r in records],
                [r["length"] for r in records],
                reflection_words,
            )
            out |= {f"eval/{name}/{k}": float(v) for k, v in (result | dynamics).items()}
        return out

    def should_save(self) -> bool:
        every = self.cfg.train.save_every
        return self.step == self.total_steps or (every > 0 and self.step % every == 0)

    def save(self) -> Path:
        step_dir = self.out / "checkpoints" / f"step_{self.step:06d}"
        state = {"step": self.step, "sampler": self.sampler.state_dict(), "config": dump_config(self.cfg)}
        save_checkpoint(step_dir, self.model, self.lm.processor, self.optimizer, self.scheduler, state)
        return step_dir
