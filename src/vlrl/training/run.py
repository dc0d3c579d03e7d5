"""What every training run shares, RL or SFT: model, data, optimizer, schedule, logging, resume.

`TrainingRun` sets these up from the config sections both schemas have (model, data, train,
logging); `GRPOTrainer` and `SFTTrainer` add only their own step. A checkpoint holds the model in
Hugging Face format plus optimizer, scheduler, RNG and data position, so a resumed run continues
exactly where it stopped.

Under torchrun the same run is data parallel (`vlrl.distributed`): the policy is sharded with
FSDP2, each rank takes a contiguous block of every global batch, losses keep their global
denominators, and rank 0 alone writes logs and evaluates. Sampling and evaluation use
`rollout_model`, a plain replica of the policy that receives the gathered weights after each
update (generation is a long sequence of small forwards whose per-layer all-gathers would
otherwise keep every rank in lockstep); in one process, or when an engine outside transformers
samples (`replica_for_rollouts` False), it is the policy itself.

A step whose gradient norm is NaN or infinite (a NaN loss gives NaN gradients) is skipped: no
optimizer update, but the step counter, the data position and the learning-rate schedule move on
as for any step, so the schedule stays a function of the step number and a resumed run redoes
exactly the same steps. Skips are counted (`train/skipped_<reason>` per step, `..._total` over
the run) and `train.max_nonfinite_skips` of them in a row stop the run (`vlrl.training.guards`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import time
from pathlib import Path

import torch

from vlrl.config import dump_config
from vlrl.distributed import all_reduce_max, broadcast_object, init_world
from vlrl.distributed.fsdp import shard_model
from vlrl.evaluation.intraining import eval_benchmark, evaluate_during_training
from vlrl.io import CONFIG_FILE
from vlrl.models.loading import pick_device
from vlrl.monitoring.dynamics import dynamics_metrics
from vlrl.training.checkpoint import (
    check_fresh_folder,
    check_resume_config,
    checkpoint_dir,
    latest_checkpoint,
    load_trainer_state,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
    save_sharded_checkpoint,
)
from vlrl.training.guards import (
    Diverged,
    Interrupted,
    SaveFailed,
    StopSignals,
    check_output_dir,
    weights_finite,
)
from vlrl.training.metrics import MetricsLogger, require_extras
from vlrl.training.sampler import PromptSampler
from vlrl.training.schedule import build_scheduler
from vlrl.training.setup import (
    build_optimizer,
    load_data,
    load_policy,
    parameter_table,
    seed_everything,
    template_for,
)


class TrainingRun:
    """Shared state and loop of a run (`train`); subclasses give their step (`run_step`), their
    end-of-step checks (`after_step`) and their evaluation (`evaluate`)."""

    name = "run"  # how the run names itself in messages

    # Whether distributed runs sample from a gathered replica of the policy (see the module doc).
    replica_for_rollouts = True
    # Why a step's update may be skipped; each gets its metrics (see the module doc).
    skip_reasons: tuple[str, ...] = ("nonfinite",)

    def __init__(self, cfg, total_steps_fn=None):
        self.cfg = self.base_cfg = cfg
        self.out = Path(cfg.train.output_dir)
        self.device = pick_device(cfg.train.device)
        d = cfg.distributed
        self.world = init_world(self.device, d.backend, d.timeout_s)
        if self.world.is_main:  # the rank that logs, before minutes of loading a model
            require_extras(cfg.logging.tensorboard, cfg.logging.wandb)
        if self.world.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
        seed_everything(cfg.train.seed)
        check_output_dir(self.out, self.world.rank)  # before minutes of loading
        self.resumed_from = resume_dir = resolve_resume(cfg.train.resume, self.out)
        if resume_dir is None and cfg.train.resume is None:
            check_fresh_folder(self.out)
        if resume_dir is not None:
            check_resume_config(resume_dir, cfg.model_dump(mode="json"))
        self.lm = load_policy(cfg.model, cfg.data, self.device, path=resume_dir)
        self.model, self.adapter = self.lm.model, self.lm.adapter
        if self.world.is_main:  # what the model and freeze / LoRA settings leave to train
            print(parameter_table(self.model, self.adapter), flush=True)
        self.rollout_model = self.model
        # FSDP2 averages gradients over ranks; the losses already carry global denominators.
        self.loss_scale = 1.0
        if self.world.distributed:
            if d.cpu_offload and self.device.type == "cpu":
                raise ValueError(
                    "distributed.cpu_offload moves GPU shards to the CPU; this run is on the CPU already "
                    "(train.device=cpu): drop it"
                )
            if self.replica_for_rollouts:
                self.rollout_model = copy.deepcopy(self.model).requires_grad_(False)
            shard_model(self.model, d.param_dtype, d.reduce_dtype, d.cpu_offload)
            self.loss_scale = float(self.world.size)
        self.template = template_for(cfg.data)
        self.train_samples, reports = load_data(cfg.data.train, cfg.data, self.adapter, self.template)
        self.eval_sets = {
            name: load_data([f], cfg.data, self.adapter, self.template)[0]
            for name, f in cfg.data.eval.items()
        }
        # Chosen, or refused, now rather than at the first evaluation hours into the run.
        self.eval_benchmarks = {
            name: eval_benchmark(samples, cfg.train.eval_benchmark, name)
            for name, samples in self.eval_sets.items()
        }
        self.last_eval: dict[str, list[dict]] = {}  # set -> records of its last evaluation, for the flips
        self.load_reports = [r.summary() for r in reports]
        self.total_steps = total_steps_fn(len(self.train_samples)) if total_steps_fn else cfg.train.steps
        self.sampler = PromptSampler(len(self.train_samples), cfg.data.seed, shuffle=cfg.data.shuffle)
        self.optimizer = build_optimizer(self.model, self.adapter, cfg.train, cfg.model.group_lr)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.train.lr_schedule, cfg.train.warmup_steps, self.total_steps
        )
        self.pad_id = self.adapter.tokenizer.pad_token_id
        vocab = self.model.get_output_embeddings().weight.shape[0]
        # Scored exactly as the rollout sampled: without the tokens it can never produce.
        self.blocked_ids = torch.tensor(self.adapter.blocked_token_ids(vocab), dtype=torch.long)
        self.step = 0
        self.skipped = dict.fromkeys(self.skip_reasons, 0)
        self.nonfinite_streak = 0
        self.last_saved: Path | None = None
        self.logger = MetricsLogger(
            self.out,
            jsonl=cfg.logging.jsonl,
            tensorboard=cfg.logging.tensorboard,
            wandb=cfg.logging.wandb,
            wandb_project=cfg.logging.wandb_project,
            config=cfg.model_dump(),
            progress=cfg.logging.progress,
            total_steps=self.total_steps,
            enabled=self.world.is_main,
        )
        if resume_dir is not None:
            state = load_trainer_state(
                resume_dir,
                self.optimizer,
                self.scheduler,
                model=self.model,
                rank=self.world.rank,
                world_size=self.world.size if self.world.distributed else None,
            )
            self.step = state["step"]
            self.sampler.load_state_dict(state["sampler"])
            self.skipped |= state.get("skipped", {})
            self.nonfinite_streak = state.get("nonfinite_streak", 0)
            if self.world.is_main:
                print(f"resumed from step {self.step} ({resume_dir})", flush=True)
        # A fresh run in a used folder, or a resumed one, must not keep metrics of steps it redoes.
        if self.world.is_main:
            self.logger.truncate_after(self.step)

    # ---- the loop every trainer shares -----------------------------------------------------
    def train(self, until: int | None = None, deadline: float | None = None) -> list[dict]:
        """Run to step `until` (default: the end), or until `time.perf_counter()` passes
        `deadline`; returns the metrics of every step run here.

        Each step: the trainer's own phases (`run_step`), evaluation every `train.eval_every`
        steps, `after_step` (which may end the run, giving why), logging, the divergence check, a
        checkpoint, then a stop on SIGTERM / Ctrl-C or at the deadline. Stopping early leaves the
        schedule untouched: the run continues from a checkpoint exactly as if it had never stopped.
        """
        history = []
        self.begin()
        with StopSignals() as signals, self.logger:
            while self.step < min(until or self.total_steps, self.total_steps):
                t0 = time.perf_counter()
                metrics, tokens = self.run_step()
                self.step += 1
                seconds = time.perf_counter() - t0
                metrics |= {"timing_s/step": seconds, "perf/throughput": tokens / max(seconds, 1e-9)}
                if self.cfg.train.eval_every and self.step % self.cfg.train.eval_every == 0:
                    metrics |= self.evaluate()
                stop = self.after_step(metrics)
                if stop or self.step % self.cfg.train.log_every == 0 or self.step == self.total_steps:
                    self.logger.log(self.step, metrics)
                history.append({"step": self.step, **metrics})
                self.check_diverged()
                if stop or self.should_save():
                    self.save()
                if stop:
                    if self.world.is_main:
                        print(f"{self.name}: stopped at step {self.step}: {stop}", flush=True)
                    break
                self.stop_if_signalled(signals.received)
                # Rank 0's clock decides for every rank: ranks that disagreed would hang each other.
                if deadline is not None and broadcast_object(time.perf_counter() > deadline, what="deadline"):
                    if self.step < self.total_steps:
                        self.save()
                    break
        return history

    def run_step(self) -> tuple[dict[str, float], float]:
        """The trainer's phases of one optimizer step: its metrics, and the tokens it processed
        (for `perf/throughput`). `self.step` is still the number of steps done before it."""
        raise NotImplementedError

    def after_step(self, metrics: dict[str, float]) -> str | None:
        """Look at the finished step's metrics (evaluation included); a returned reason ends the
        run after this step is logged and saved."""
        return None

    def evaluate(self) -> dict[str, float]:
        """In-training evaluation metrics (`eval/<set>/...`)."""
        raise NotImplementedError

    def begin(self) -> None:
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / CONFIG_FILE).write_text(dump_config(self.base_cfg))

    def lockstep(self, micro: list[list[int]]) -> tuple[list[list[int]], list[float]]:
        """Micro-batches padded to the same count on every rank, with their loss weights.

        Each FSDP2 forward and backward is a collective, so every rank must run as many as the
        busiest one; the padding repeats a real micro-batch (row 0 when a rank has none) with
        weight 0, which adds nothing to loss, gradients or metrics.
        """
        n = all_reduce_max(len(micro), "micro-batch count")
        filler = micro[0] if micro else [0]
        return micro + [filler] * (n - len(micro)), [1.0] * len(micro) + [0.0] * (n - len(micro))

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

    def apply_gradients(self) -> float:
        """Clip and take the optimizer step, unless the gradient norm is NaN or infinite: then the
        gradients are dropped and the weights stay as they are. Returns the norm, which is the
        global one under FSDP2, so every rank makes the same choice."""
        grad_norm = self.clip_gradients()
        if math.isfinite(grad_norm):
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def count_skip(self, reason: str | None) -> dict[str, float]:
        """Record why the step just taken made no update (None: it did); returns its metrics,
        `train/skipped_<reason>` (1 or 0) and `train/skipped_<reason>_total` for every reason."""
        if reason == "nonfinite":
            self.nonfinite_streak += 1
        elif reason is None:
            self.nonfinite_streak = 0
        metrics = {}
        for name in self.skip_reasons:
            self.skipped[name] += reason == name
            metrics[f"train/skipped_{name}"] = float(reason == name)
            metrics[f"train/skipped_{name}_total"] = float(self.skipped[name])
        return metrics

    def check_diverged(self) -> None:
        """Stop once `train.max_nonfinite_skips` steps in a row were non-finite."""
        limit = self.cfg.train.max_nonfinite_skips
        if self.nonfinite_streak >= limit:
            raise Diverged(
                f"stopped at step {self.step}: the last {self.nonfinite_streak} steps had a NaN or infinite "
                f"loss or gradient norm (train.max_nonfinite_skips={limit}) and were not applied: lower "
                f"train.lr (now {self.cfg.train.lr:g}) or check the rewards and data; {self._last_checkpoint_text()}"
            )

    def stop_if_signalled(self, received: int) -> None:
        """After a finished step: when any rank got SIGTERM / SIGINT (`received`, 0 for none), save
        and raise `Interrupted`. The ranks take the maximum, so they all stop at the same step."""
        signum = all_reduce_max(received, "stop signal")
        if not signum or self.step >= self.total_steps:
            return
        step_dir = self.last_saved if self.last_saved == checkpoint_dir(self.out, self.step) else self.save()
        raise Interrupted(
            f"stopped by {signal.Signals(signum).name} after step {self.step}; saved {step_dir}. "
            "Resume with the same config and train.resume=auto",
            signum,
        )

    def _last_checkpoint_text(self) -> str:
        latest = latest_checkpoint(self.out)
        return f"the last complete checkpoint is {latest}" if latest else "no checkpoint was saved yet"

    def evaluate_sets(self, backend, max_new_tokens: int, reflection_words: list[str]) -> dict[str, float]:
        """In-training evaluation of every data.eval set, by its convention (`eval_benchmark`):
        greedy acc / format / length, pass@k when train.eval_samples > 1, the flips since the last
        evaluation, and MAYE's dynamics (length and reflection split by correctness) under eval/<set>/..."""
        t = self.cfg.train
        out: dict[str, float] = {}
        # Rank 0 evaluates alone (with the replica: no collectives); the others wait for its numbers.
        for name, samples in self.eval_sets.items() if self.world.is_main else ():
            result = evaluate_during_training(
                backend,
                self.adapter,
                self.template,
                samples,
                max_new_tokens,
                n=t.eval_samples,
                k_list=t.eval_pass_k,
                benchmark=self.eval_benchmarks[name],
                batch_size=t.eval_batch_size,
                previous=self.last_eval.get(name),
            )
            records = self.last_eval[name] = result.pop("records")
            dynamics = dynamics_metrics(
                [r["text"] for r in records],
                [r["correct"] for r in records],
                [r["length"] for r in records],
                reflection_words,
            )
            out |= {f"eval/{name}/{k}": float(v) for k, v in (result | dynamics).items()}
        return broadcast_object(out, what="evaluation")

    def should_save(self) -> bool:
        every = self.cfg.train.save_every
        return self.step == self.total_steps or (every > 0 and self.step % every == 0)

    def save(self) -> Path:
        """Write the checkpoint of the current step; refuses (`Diverged`) weights holding NaN or
        infinity, and turns a failed write (disk full, permissions) into `SaveFailed`."""
        step_dir = checkpoint_dir(self.out, self.step)
        if all_reduce_max(int(not weights_finite(self.model)), "weights check"):
            raise Diverged(
                f"refusing to save {step_dir}: the weights hold NaN or infinite values; lower train.lr "
                f"(now {self.cfg.train.lr:g}); {self._last_checkpoint_text()}"
            )
        state = {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "config": dump_config(self.base_cfg),
            "skipped": dict(self.skipped),
            "nonfinite_streak": self.nonfinite_streak,
        }
        parts = (step_dir, self.model, self.lm.processor, self.optimizer, self.scheduler, state)
        try:
            if self.world.distributed:
                save_sharded_checkpoint(*parts, rank=self.world.rank, world_size=self.world.size)
            else:
                save_checkpoint(*parts)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise SaveFailed(
                f"could not write checkpoint {step_dir}: {exc.strerror or exc}{where}; "
                f"{self._last_checkpoint_text()} (free the space, then resume with train.resume=auto)"
            ) from exc
        self.last_saved = step_dir
        if self.world.is_main:  # the other ranks are done with the folder: the save ended in a barrier
            prune_checkpoints(self.out, self.cfg.train.keep_last_checkpoints, keep=self.resumed_from)
        return step_dir
