"""Supervised fine-tuning (cold start): learn each sample's `solution` given its prompt.

The same run machinery as RL (`TrainingRun`: loading, LoRA / freezing, precision, checkpoints,
resume, logging); the step is cross-entropy on the response tokens only, averaged over all
response tokens of the batch (micro-batches share that denominator, so accumulation is exact),
plus, for Mixture-of-Experts models with `model.router_aux_loss_coef` > 0, the routers'
load-balancing loss (the policy's model-side loss, as in RL).
Its checkpoints are what `vlrl train` starts from. Data parallel (torchrun), each rank takes a
contiguous block of the batch and the token count is summed over ranks first, so the loss is
the same mean as in one process. A step with a NaN or infinite gradient is skipped as in RL
(`vlrl.training.run`).
"""

from __future__ import annotations

import math

from vlrl.config import SFTConfig
from vlrl.config.sections import REFLECTION_WORDS
from vlrl.data import DataError, Sample
from vlrl.distributed import all_reduce_sums, shard_range
from vlrl.models.logprobs import response_mask, token_budget_batches
from vlrl.models.policy import Policy
from vlrl.rollout import make_backend
from vlrl.training.run import TrainingRun


def sft_length(cfg: SFTConfig, n_samples: int) -> tuple[int, str]:
    """The number of steps of an SFT run over `n_samples` training samples, and what sets it:
    train.steps, unless sft.epochs is set and its passes over the data end sooner."""
    steps, batch, epochs = cfg.train.steps, cfg.sft.batch_size, cfg.sft.epochs
    by_epochs = math.inf if epochs is None else math.ceil(epochs * n_samples / batch)
    if by_epochs < steps:
        return by_epochs, (
            f"sft.epochs {epochs} ({epochs} x {n_samples} samples / sft.batch_size {batch}),"
            f" before train.steps {steps}"
        )
    return steps, f"train.steps ({steps * batch / n_samples:.1f} passes over {n_samples} samples)"


class SFTTrainer(TrainingRun):
    name = "sft"

    def __init__(self, cfg: SFTConfig):
        super().__init__(cfg, lambda n: sft_length(cfg, n)[0])
        if self.world.is_main:
            # Stated up front: a run cut short by sft.epochs never writes the step_* a config expects.
            print(f"sft: {self.total_steps} steps, set by {sft_length(cfg, len(self.train_samples))[1]}")
        self.targets = [self._target(s) for s in self.train_samples]
        # Padded passes: every prompt has one target, a shared prefix would save nothing.
        self.policy = Policy(
            self.model,
            self.adapter,
            pad_id=self.pad_id,
            blocked_ids=self.blocked_ids,
            shared_prefix=False,
            router_aux_loss_coef=cfg.model.router_aux_loss_coef,
        )
        if cfg.sft.batch_size < self.world.size:
            raise ValueError(
                f"sft.batch_size ({cfg.sft.batch_size}) is smaller than the number of processes "
                f"({self.world.size}): every rank needs at least one sample per step"
            )

    def _target(self, sample: Sample) -> str:
        value = sample.fields().get(self.cfg.sft.target_field)
        if not isinstance(value, str) or not value:
            raise DataError(
                str(sample.id),
                None,
                self.cfg.sft.target_field,
                f"sample has no text target for SFT (sft.target_field='{self.cfg.sft.target_field}')",
            )
        return self.adapter.render_target(sample, value)

    def run_step(self) -> tuple[dict[str, float], float]:
        with self.precision():
            metrics = self.sft_step()
        tokens = metrics.pop("tokens")
        metrics |= self.count_skip(None if math.isfinite(metrics["grad_norm"]) else "nonfinite")
        return metrics, tokens

    def after_step(self, metrics: dict[str, float]) -> str | None:
        return self.reached_target(metrics)

    def reached_target(self, metrics: dict[str, float]) -> str | None:
        """Why to stop now under `sft.stop_at_acc` (every eval set at or above it), else None."""
        target = self.cfg.sft.stop_at_acc
        accs = {k: v for k, v in metrics.items() if k.startswith("eval/") and k.endswith("/acc")}
        if (
            target is None
            or self.step < self.cfg.sft.stop_from_step
            or not accs
            or min(accs.values()) < target
        ):
            return None
        return ", ".join(f"{k} {v:.3f}" for k, v in accs.items()) + f" >= sft.stop_at_acc {target}"

    def sft_step(self) -> dict[str, float]:
        """One optimizer step over `sft.batch_size` samples: mean token cross-entropy of the targets."""
        idx = self.sampler.next_batch(self.cfg.sft.batch_size)
        mine = shard_range(len(idx), self.world.size, self.world.rank)
        mine_idx = idx[mine.start : mine.stop]
        prompts = [self.adapter.encode(self.train_samples[i], self.template) for i in mine_idx]
        responses = [self.adapter.response_ids(self.targets[i]) for i in mine_idx]
        lengths = [r.numel() for r in responses]
        counts = {
            "targets": sum(lengths),
            "tokens": sum(p.length + n for p, n in zip(prompts, lengths, strict=True)),
        }
        counts = all_reduce_sums(counts, "token counts")
        total_tokens = counts["targets"]
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0}
        micro = token_budget_batches(
            [p.length + n for p, n in zip(prompts, lengths, strict=True)], self.cfg.train.micro_batch_tokens
        )
        for rows, w in zip(*self.lockstep(micro), strict=True):
            scores = self.policy.score(
                [prompts[i] for i in rows], list(range(len(rows))), [responses[i] for i in rows], 1.0
            )
            mask = response_mask([lengths[i] for i in rows], scores.logprobs.device)
            loss = -(scores.logprobs * mask).sum() / total_tokens
            if scores.model_loss is not None:
                share = len(rows) / len(idx)  # a mean over the batch's passes
                sums["router_aux_loss"] = (
                    sums.get("router_aux_loss", 0.0)
                    + scores.model_loss.item() * w * share / self.policy.router_aux_loss_coef
                )
                loss = loss + scores.model_loss * share
            (loss * (w * self.loss_scale)).backward()
            sums["loss"] += loss.item() * w
        sums = all_reduce_sums(sums, "loss")
        grad_norm = self.apply_gradients()
        self.scheduler.step()
        return {
            **sums,
            "grad_norm": grad_norm,
            "lr": self.scheduler.get_last_lr()[0],
            "response_length/mean": total_tokens / len(idx),
            "tokens": counts["tokens"],
            "epoch": self.step * self.cfg.sft.batch_size / len(self.train_samples),
        }

    def evaluate(self) -> dict[str, float]:
        backend = make_backend("hf", self.rollout_model, self.adapter)
        backend.sync_weights(self.model)
        return self.evaluate_sets(backend, self.cfg.sft.eval_max_new_tokens, REFLECTION_WORDS)
