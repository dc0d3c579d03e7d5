"""R1-style RL for VLMs: the GRPO family in one loop.

    for step:  rollout -> score -> advantages -> policy update -> sync -> log / eval / checkpoint

`run_step()` reads as the first half of that line, each phase a method below; the shared loop
(`TrainingRun.train`, the same for SFT) does the rest. The maths (advantages, policy losses,
aggregation, KL estimators) are table entries in `vlrl.algos`, chosen by name in the config, so
GRPO, Dr.GRPO, DAPO, GSPO, RLOO and REINFORCE++ are settings of this one loop.

Departures from the textbook algorithm, all deliberate:
- Sampling uses a per-step seed (train.seed, step), so a resumed run draws the same completions
  as an uninterrupted one.
- With `algo.ppo_epochs == 1` the update is on-policy and the old log-probs are the current ones
  detached (ratio 1, as in DeepSeekMath's mu = 1 case) — one forward pass saved per micro-batch.
- The vision placeholders are masked out of the distribution in rollout and update alike.
- The sampler's own log-probs (`Completion.logprobs`, every backend) are compared with the old
  policy's each step (`mismatch/*` metrics); `algo.rollout_correction` turns the ratio into
  truncated or masked importance weights on the policy loss (`vlrl.algos.MISMATCH_CORRECTIONS`).
- A step with nothing to learn from (DAPO dynamic sampling kept no group with differing rewards
  after its extra rounds) or with a NaN / infinite gradient makes no update but still counts as
  a step (`vlrl.training.run`), logged as `train/skipped_no_signal` / `train/skipped_nonfinite`.

Data parallel (torchrun): the step's P prompts are the same on every rank; rank r samples its
contiguous block of them (each group whole on one rank, with the draws it would have in one
process) and the completions are gathered, so every rank scores the whole batch and computes the
same advantages; each then updates on its own block's rows with the global loss denominators,
and the loss metrics are summed over ranks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from vlrl.algos import (
    ADVANTAGES,
    KL_ESTIMATORS,
    MISMATCH_CORRECTIONS,
    POLICY_LOSSES,
    LossConfig,
    MismatchConfig,
    aggregate,
    aggregation_denominator,
    get,
    masked_mean,
)
from vlrl.config import TrainConfig
from vlrl.data import Sample
from vlrl.distributed import all_gather_objects, all_reduce_sums, shard_range
from vlrl.io import ALARMS_FILE, ROLLOUTS_FILE, truncate_jsonl
from vlrl.models.batching import Encoded
from vlrl.models.logprobs import response_mask, token_budget_batches
from vlrl.models.policy import Policy
from vlrl.models.routing import Routes, route_mismatch
from vlrl.monitoring.alarms import AlarmMonitor, append_alarms
from vlrl.monitoring.answers import answer_health
from vlrl.monitoring.dynamics import dynamics_metrics
from vlrl.monitoring.experts import ExpertLoadMonitor
from vlrl.monitoring.rollouts import rollout_record, write_rollouts
from vlrl.rewards.runner import check_rewards
from vlrl.rollout import make_backend
from vlrl.rollout.base import Completion, SamplingParams
from vlrl.training.run import TrainingRun
from vlrl.training.scoring import RewardScorer
from vlrl.training.setup import load_reference
from vlrl.training.stages import check_stages, stage_config, stage_index, total_steps


@dataclass
class GroupBatch:
    """One step's data: P prompts x G completions, flattened row-major to B = P * G rows."""

    samples: list[Sample]
    prompts: list[Encoded]
    completions: list[list[Completion]]
    rewards: torch.Tensor = None  # [P, G]
    reward_scores: dict[str, list[float | None]] = field(default_factory=dict)
    advantages: torch.Tensor = None  # [B]
    kl: torch.Tensor = None  # [B] summed KL to the reference, when algo.kl_in_reward folds it in
    informative: bool = True  # False: no group's rewards differ, there is nothing to learn
    sampling: dict[str, float] = field(default_factory=dict)  # dynamic sampling's counts, logged

    @property
    def flat(self) -> list[Completion]:
        return [c for group in self.completions for c in group]

    @property
    def group_size(self) -> int:
        return len(self.completions[0]) if self.completions else 1

    def rows(self, rows: list[int]) -> tuple[list[int], list[int], list[torch.Tensor]]:
        """For global `rows`: their distinct prompts (indices into `prompts`, in order of first
        appearance), each row's position in that list, and each row's response token ids."""
        G, flat = self.group_size, self.flat
        prompts = list(dict.fromkeys(i // G for i in rows))
        local = {p: k for k, p in enumerate(prompts)}
        return prompts, [local[i // G] for i in rows], [flat[i].token_ids for i in rows]


class GRPOTrainer(TrainingRun):
    name = "grpo"
    skip_reasons = ("nonfinite", "no_signal")

    def __init__(self, cfg: TrainConfig):
        # A vLLM engine or server holds its own copy of the weights: an HF replica would be idle.
        self.replica_for_rollouts = cfg.rollout.backend == "hf"
        check_stages(cfg)  # before loading anything: a bad stage is a config error
        check_rewards(cfg)  # and so is a misspelt or broken user reward, of any stage
        super().__init__(cfg, lambda _: total_steps(cfg))
        self.cfg = stage_config(cfg, self.step)
        self.backend = make_backend(cfg.rollout.backend, self.rollout_model, self.adapter, self.cfg)
        self.rollout_routes = self._record_rollout_routes(cfg.model.routing_replay)
        # A resumed policy is no longer the checkpoint an engine loaded at start-up.
        self.backend.sync_weights(self.model)
        self.scorer = RewardScorer(cfg.reward, self.adapter)
        m = cfg.model
        # With LoRA the base weights are the reference: no second model is loaded.
        need_reference = cfg.algo.kl_beta > 0
        frozen_vision = all(g in m.freeze for g in self.adapter.vision_groups)
        self.policy = Policy(
            self.model,
            self.adapter,
            pad_id=self.pad_id,
            blocked_ids=self.blocked_ids,
            reference=load_reference(cfg, self.device, self.world)
            if need_reference and not m.lora.enabled
            else None,
            lora_reference=need_reference and m.lora.enabled,
            # Gradient checkpointing recomputes layers and cannot keep the prompt's KV cache.
            shared_prefix=not m.gradient_checkpointing,
            # Sharded, the policy's vision tower cannot run outside the model's own forward.
            reuse_vision=frozen_vision and not self.world.distributed,
            router_aux_loss_coef=m.router_aux_loss_coef,
        )
        self.monitor = AlarmMonitor(cfg.monitor)
        # MoE models: per-step expert load and router entropy of the update passes (None when dense).
        self.expert_load = ExpertLoadMonitor.for_model(
            self.model, self.adapter, cfg.monitor.dead_expert_steps
        )
        # The steps after the checkpoint (all of them when there is none) are redone: their old
        # records go, as metrics.jsonl's do.
        if self.world.is_main:
            for name in (ALARMS_FILE, ROLLOUTS_FILE):
                truncate_jsonl(self.out / name, self.step)

    # ---- the loop ---------------------------------------------------------------------------
    def run_step(self) -> tuple[dict[str, float], float]:
        """One RL step, the loop of the module docstring: rollout -> score -> advantages -> policy
        update -> sync. Logging, evaluation and checkpoints are the shared loop's (`TrainingRun.train`)."""
        self.enter_stage()
        with self.precision():
            batch, timing = self.rollout()
            batch = self.score_and_filter(batch, timing)
            if batch.informative:
                self.compute_advantages(batch)
                metrics = self.policy_update(batch, timing)
            else:
                metrics = self.skip_update(batch)
        self.backend.sync_weights(self.model)
        self.last_batch = batch
        metrics |= self.batch_metrics(batch, timing) | self.count_skip(_skip_reason(batch, metrics))
        return metrics, float(sum(c.token_ids.numel() for c in batch.flat))

    def after_step(self, metrics: dict[str, float]) -> str | None:
        self.observe(self.last_batch, metrics)
        return None

    def enter_stage(self) -> None:
        """Switch to the config of the stage the next step belongs to (announced once)."""
        index = stage_index(self.base_cfg, self.step)
        if index is None or index == getattr(self, "stage", None):
            return
        self.stage = index
        self.cfg = stage_config(self.base_cfg, self.step)
        self.scorer = RewardScorer(self.cfg.reward, self.adapter)
        name = self.base_cfg.stages[index].get("name", str(index))
        r = self.cfg.rollout
        if self.world.is_main:
            print(
                f"stage {index + 1}/{len(self.base_cfg.stages)} '{name}' from step {self.step + 1}: "
                f"group_size={r.group_size} max_new_tokens={r.max_new_tokens} prompts_per_step={r.prompts_per_step}"
            )

    # ---- phases -----------------------------------------------------------------------------
    def rollout(self, n_prompts: int | None = None, round_: int = 0) -> tuple[GroupBatch, dict]:
        """Phase 1: draw P prompts and sample G completions each (shared prompt prefix); data
        parallel, each rank samples its block of prompts and every rank receives all groups."""
        t0 = time.perf_counter()
        r = self.cfg.rollout
        idx = self.sampler.next_batch(n_prompts or r.prompts_per_step)
        samples = [self.train_samples[i] for i in idx]
        prompts = [self.adapter.encode(s, self.template) for s in samples]
        mine = shard_range(len(prompts), self.world.size, self.world.rank)
        params = SamplingParams(
            group_size=r.group_size,
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            seed=(self.cfg.train.seed * 1_000_003 + self.step) * 16 + round_,
            first_prompt=mine.start,
        )
        local = self.backend.generate(prompts[mine.start : mine.stop], params)
        completions = [group for part in all_gather_objects(local, "rollout") for group in part]
        return GroupBatch(samples, prompts, completions), {"gen": time.perf_counter() - t0}

    def score_and_filter(self, batch: GroupBatch, timing: dict) -> GroupBatch:
        """Phase 2: rewards; with DAPO dynamic sampling, keep only groups whose rewards differ,
        drawing more prompts (up to rollout.max_resample_rounds) until P groups are kept. Counted
        per step: `dynamic_sampling/kept_groups` (updated on), `dropped_groups` (equal rewards),
        `rounds` (rounds of P prompts drawn).

        When no round kept any group, the first round's batch comes back marked not
        `informative`: its metrics are logged, but the step makes no update (`skip_update`).
        """
        t0 = time.perf_counter()
        self._score(batch)
        r = self.cfg.rollout
        if r.dynamic_sampling:
            first, batch = batch, self._keep_informative(batch)
            rounds = 1
            for round_ in range(1, r.max_resample_rounds + 1):
                if len(batch.samples) >= r.prompts_per_step:
                    break
                extra, _ = self.rollout(r.prompts_per_step, round_)
                self._score(extra)
                batch = _concat(batch, self._keep_informative(extra))
                rounds += 1
            dropped = rounds * r.prompts_per_step - len(batch.samples)
            if batch.samples:
                batch = _take(batch, r.prompts_per_step)
            else:
                batch, batch.informative = first, False
            batch.sampling = {
                "dynamic_sampling/kept_groups": float(len(batch.samples) if batch.informative else 0),
                "dynamic_sampling/dropped_groups": float(dropped),
                "dynamic_sampling/rounds": float(rounds),
            }
        timing["reward"] = time.perf_counter() - t0
        return batch

    def _score(self, batch: GroupBatch) -> None:
        batch.rewards, batch.reward_scores, self._reward_stats = self.scorer.score(
            batch.samples, batch.completions, self.cfg.rollout.max_new_tokens
        )

    @staticmethod
    def _keep_informative(batch: GroupBatch) -> GroupBatch:
        keep = [p for p in range(len(batch.samples)) if batch.rewards[p].unique().numel() > 1]
        return _select(batch, keep)

    def compute_advantages(self, batch: GroupBatch) -> None:
        """Phase 3: advantages [P, G] -> [B] from the group rewards (and the KL penalty when it
        is folded into the reward, as in the original PPO-RLHF recipe)."""
        rewards = batch.rewards
        if self.cfg.algo.kl_beta > 0 and self.cfg.algo.kl_in_reward:
            batch.kl = self._sequence_kl(batch)  # [B]
            rewards = rewards - self.cfg.algo.kl_beta * batch.kl.view_as(rewards)
        batch.advantages = get(ADVANTAGES, self.cfg.algo.advantage, "advantage")(rewards).reshape(-1)

    def skip_update(self, batch: GroupBatch) -> dict[str, float]:
        """Phase 3-4 of a step without signal: zero advantages, no gradient; the learning-rate
        schedule moves on as for any step, so it stays a function of the step number."""
        batch.advantages = torch.zeros(batch.rewards.numel())
        self.scheduler.step()
        return {"lr": self.scheduler.get_last_lr()[0]}

    def policy_update(self, batch: GroupBatch, timing: dict) -> dict[str, float]:
        """Phase 4: algo.ppo_epochs passes over token-budget micro-batches, one optimizer step each."""
        a = self.cfg.algo
        lengths = [c.token_ids.numel() for c in batch.flat]
        mask_all = response_mask(lengths)  # the whole batch's: global loss denominators
        micro, weights = self._micro_batches(batch)
        denom = aggregation_denominator(mask_all, a.loss_agg)
        mismatch_max = 0.0  # largest |log(pi_train / pi_sampler)| of the step's tokens
        need_old = a.ppo_epochs > 1
        t0 = time.perf_counter()
        vision = self.policy.vision_caches(batch.prompts)
        replay = self._replayed_routes(batch, micro, vision)  # per global row, or None
        route_counts = [0, 0]  # (token, layer) routes differing from the rollout's, compared
        old = None
        if need_old:
            old = self._frozen_logprobs(batch, micro, vision, routes=self._micro_routes(batch, micro, replay))
        use_ref = a.kl_beta > 0 and not a.kl_in_reward
        ref = self._frozen_logprobs(batch, micro, vision, reference=True) if use_ref else None
        timing["old_ref"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        epochs = 0
        for epoch in range(a.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            for k, (rows, w) in enumerate(zip(micro, weights, strict=True)):
                prompts, row_prompt, responses = batch.rows(rows)
                # The first epoch's pass runs the step's starting weights: its routes are the
                # training side's, compared with the rollout's (moe/route_mismatch).
                record = self.rollout_routes and epoch == 0 and w > 0
                routes = self._routes(batch, rows, replay, record)
                scores = self.policy.score(
                    [batch.prompts[p] for p in prompts],
                    row_prompt,
                    responses,
                    self.cfg.rollout.temperature,
                    vision=[vision[p] for p in prompts] if vision else None,
                    with_entropy=True,
                    entropy_grad=bool(a.entropy_coef),
                    routes=routes,
                )
                if routes is not None and routes.record:
                    counts = route_mismatch([batch.flat[i].routes for i in rows], routes.used)
                    route_counts = [x + y for x, y in zip(route_counts, counts, strict=True)]
                logp = scores.logprobs
                mask = mask_all[rows][:, : logp.shape[1]].to(logp.device)
                old_logp = old[k] if need_old else logp.detach()
                loss_mat, m = self._token_losses(
                    scores, old_logp, ref[k] if ref is not None else None, batch, rows, mask
                )
                mismatch_max = max(mismatch_max, float(m.pop("mismatch/log_ratio_max_abs")))
                loss = aggregate(
                    loss_mat, mask, a.loss_agg, norm_length=self.cfg.rollout.max_new_tokens, denominator=denom
                )
                weight = w * len(rows) / len(lengths)
                if scores.model_loss is not None:
                    # A mean over the batch's passes, as the policy loss is one over its tokens.
                    m["router_aux_loss"] = scores.model_loss.detach() / self.policy.router_aux_loss_coef
                    loss = loss + scores.model_loss * (len(rows) / len(lengths))
                (loss * (w * self.loss_scale)).backward()
                m["entropy"] = masked_mean(scores.entropy.detach(), mask)
                m["loss"] = loss.detach()
                for key, value in m.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * (w if key == "loss" else weight)
            epochs += 1
            grad_norm = self.apply_gradients()
            if not math.isfinite(grad_norm):
                break  # the next epoch would start from the same weights and fail the same way
        self.scheduler.step()
        timing["update"] = time.perf_counter() - t0
        metrics = {k: v / epochs for k, v in all_reduce_sums(sums, "loss metrics").items()}
        metrics["mismatch/log_ratio_max_abs"] = max(all_gather_objects(mismatch_max, "mismatch max"))
        metrics["grad_norm"] = float(grad_norm)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        if self.rollout_routes:
            parts = all_gather_objects(route_counts, "route mismatch")
            differing, total = (sum(x) for x in zip(*parts, strict=True))
            metrics["moe/route_mismatch"] = differing / max(total, 1)
        if self.expert_load is not None:
            metrics |= self.expert_load.step_metrics(lambda sums: all_reduce_sums(sums, "expert load"))
        return metrics

    # ---- helpers ----------------------------------------------------------------------------
    def _token_losses(self, scores, old_logp, ref_logp, batch: GroupBatch, rows: list[int], mask):
        """[rows, T] per-token losses of one micro-batch and their metrics: the policy loss, weighted
        for the sampler's mismatch (`algo.rollout_correction`: 1 with none), the KL term when it is
        in the loss, and the entropy bonus."""
        a, logp = self.cfg.algo, scores.logprobs
        adv = batch.advantages[rows].to(logp.device)
        loss_fn = get(POLICY_LOSSES, a.policy_loss, "policy loss")
        loss_mat, m = loss_fn(logp, old_logp, adv, mask, LossConfig.from_config(a))
        # The sampler's log-probs against the old policy's: weights and metrics.
        correct = get(MISMATCH_CORRECTIONS, a.rollout_correction, "rollout correction")
        weight, mismatch = correct(
            old_logp, _behaviour(batch, rows, logp), mask, MismatchConfig.from_config(a)
        )
        loss_mat = loss_mat * weight
        m |= {f"mismatch/{key}": value for key, value in mismatch.items()}
        if ref_logp is not None:
            kl = get(KL_ESTIMATORS, a.kl_estimator, "KL estimator")(logp, ref_logp)
            loss_mat = loss_mat + a.kl_beta * kl
            m["kl"] = masked_mean(kl.detach(), mask)
        if a.entropy_coef:
            loss_mat = loss_mat - a.entropy_coef * scores.entropy
        return loss_mat, m

    def _micro_batches(self, batch: GroupBatch) -> tuple[list[list[int]], list[float]]:
        """This rank's rows (its block of prompts, whole groups) in token-budget micro-batches of
        global row indices, padded to the same count on every rank (`lockstep`)."""
        G = batch.group_size
        mine = shard_range(len(batch.samples), self.world.size, self.world.rank)
        rows = list(range(mine.start * G, mine.stop * G))
        flat = batch.flat
        lengths = [batch.prompts[i // G].length + flat[i].token_ids.numel() for i in rows]
        micro = token_budget_batches(lengths, self.cfg.train.micro_batch_tokens)
        return self.lockstep([[rows[i] for i in m] for m in micro])

    # ---- routing replay (vlrl.models.routing) ---------------------------------------------
    def _record_rollout_routes(self, mode: str) -> bool:
        """Ask the backend for each token's MoE routes: what R3 replays and moe/route_mismatch
        compares with (a dense model has none); True when they will come."""
        moe = bool(self.adapter.routers(self.model))
        if mode != "off" and not moe:
            raise ValueError(f"model.routing_replay={mode}: {self.adapter.family} has no MoE routers")
        recording = moe and self.backend.record_routes(True)
        if mode == "R3" and not recording:
            raise ValueError(
                f"model.routing_replay=R3: the {self.cfg.rollout.backend} rollout backend returns no routes; "
                "use R2 (routes of the step's first training forward) or rollout.backend=hf"
            )
        return recording

    def _replayed_routes(self, batch: GroupBatch, micro, vision) -> list | dict | None:
        """Routes the step's policy passes replay, indexable by global row: R3 the rollout's; R2
        those of a no-grad pass at the step's starting weights, run here; None when off."""
        mode = self.cfg.model.routing_replay
        if mode == "R3":
            return [c.routes for c in batch.flat]
        if mode != "R2":
            return None
        routes = [self._routes(batch, rows, None, record=True) for rows in micro]
        self._frozen_logprobs(batch, micro, vision, routes=routes)
        return {
            i: u for rows, r in zip(micro, routes, strict=True) for i, u in zip(rows, r.used, strict=True)
        }

    def _routes(self, batch: GroupBatch, rows: list[int], replay, record: bool = False) -> Routes | None:
        """The routes of a policy pass over `rows`: `replay` (by global row) forced, and with
        `record` the ones used kept; None when neither."""
        if replay is None and not record:
            return None
        G, flat = batch.group_size, batch.flat
        lengths = [batch.prompts[i // G].length + flat[i].token_ids.numel() for i in rows]
        return Routes(lengths, None if replay is None else [replay[i] for i in rows], record)

    def _micro_routes(self, batch: GroupBatch, micro, replay) -> list[Routes | None] | None:
        return None if replay is None else [self._routes(batch, rows, replay) for rows in micro]

    def _frozen_logprobs(
        self, batch: GroupBatch, micro, vision, reference: bool = False, routes: list | None = None
    ) -> list[torch.Tensor]:
        """Per micro-batch, [rows, T] log-probs without gradient: the current policy's (PPO's old
        policy; `routes`: per micro-batch, to replay or record) or the reference's."""
        out = []
        for k, rows in enumerate(micro):
            prompts, row_prompt, responses = batch.rows(rows)
            out.append(
                self.policy.frozen_logprobs(
                    [batch.prompts[p] for p in prompts],
                    row_prompt,
                    responses,
                    self.cfg.rollout.temperature,
                    vision=[vision[p] for p in prompts] if vision else None,
                    reference=reference,
                    routes=None if routes is None else routes[k],
                )
            )
        return out

    def _sequence_kl(self, batch: GroupBatch) -> torch.Tensor:
        """[B] summed KL(policy || reference) of every completion; each rank scores its rows."""
        lengths = [c.token_ids.numel() for c in batch.flat]
        micro, weights = self._micro_batches(batch)
        vision = self.policy.vision_caches(batch.prompts)
        pol = self._frozen_logprobs(batch, micro, vision)
        ref = self._frozen_logprobs(batch, micro, vision, reference=True)
        kl_fn = get(KL_ESTIMATORS, self.cfg.algo.kl_estimator, "KL estimator")
        mask_all = response_mask(lengths)
        mine = {}
        for rows, w, p, r in zip(micro, weights, pol, ref, strict=True):
            if w:
                mask = mask_all[rows][:, : p.shape[1]].to(p.device)
                mine |= dict(zip(rows, (kl_fn(p, r) * mask).sum(-1).cpu().tolist(), strict=True))
        out = torch.zeros(len(lengths))
        for part in all_gather_objects(mine, "sequence KL"):
            for row, value in part.items():
                out[row] = value
        return out

    def batch_metrics(self, batch: GroupBatch, timing: dict) -> dict[str, float]:
        """verl-style names: reward/<name>/mean, acc, response_length/mean, timing_s/<phase>, ...
        (`timing_s/step` and `perf/throughput`, response tokens per second, are the shared loop's)."""
        m: dict[str, float] = {}
        for name, scores in batch.reward_scores.items():
            vals = [s for s in scores if s is not None]
            if vals:
                m[f"reward/{name}/mean"] = sum(vals) / len(vals)
        m.update(self._reward_stats)
        m.update(batch.sampling)
        m["reward/total/mean"] = batch.rewards.mean().item()
        if "accuracy" in batch.reward_scores:
            m["acc"] = m.get("reward/accuracy/mean", 0.0)
        lengths = torch.tensor([c.token_ids.numel() for c in batch.flat], dtype=torch.float32)
        m["response_length/mean"] = lengths.mean().item()
        m["response_length/clip_ratio"] = sum(c.finish_reason == "length" for c in batch.flat) / len(lengths)
        std = batch.rewards.std(dim=1) if batch.rewards.shape[1] > 1 else torch.zeros(len(batch.samples))
        m["frac_zero_std_groups"] = (std == 0).float().mean().item()
        if batch.kl is not None:  # per response token, as the in-loss `kl` (a mean over tokens)
            m["kl"] = batch.kl.sum().item() / lengths.sum().item()
        for k, v in timing.items():
            m[f"timing_s/{k}"] = v
        if self.base_cfg.stages:
            m["stage"] = float(self.stage)
            m["rollout/group_size"] = float(self.cfg.rollout.group_size)
            m["rollout/max_new_tokens"] = float(self.cfg.rollout.max_new_tokens)
        # Prompt + response tokens of the B sequences, as verl's perf/total_num_tokens.
        prompt_tokens = sum(p.length * len(g) for p, g in zip(batch.prompts, batch.completions, strict=True))
        m["perf/total_num_tokens"] = float(prompt_tokens) + lengths.sum().item()
        return m

    def evaluate(self) -> dict[str, float]:
        return self.evaluate_sets(
            self.backend, self.cfg.rollout.max_new_tokens, self.cfg.monitor.reflection_words
        )

    def observe(self, batch: GroupBatch, metrics: dict[str, float]) -> None:
        """Training dynamics and answer health into `metrics`, alarms raised, rollouts dumped."""
        texts = [c.text for c in batch.flat]
        accuracy = batch.reward_scores.get("accuracy")
        correct = [None if a is None else a >= 1.0 for a in accuracy] if accuracy else [None] * len(texts)
        lengths = [c.token_ids.numel() for c in batch.flat]
        metrics |= dynamics_metrics(texts, correct, lengths, self.cfg.monitor.reflection_words)
        metrics |= answer_health(texts)
        alarms = self.monitor.update(self.step, metrics)
        if not self.world.is_main:
            return
        for alarm in alarms:
            print(alarm, flush=True)
        append_alarms(self.out / ALARMS_FILE, alarms)
        every = self.cfg.logging.rollouts_every
        if every and self.step % every == 0:
            write_rollouts(self.out / ROLLOUTS_FILE, self.rollout_records(batch))

    def rollout_records(self, batch: GroupBatch) -> list[dict]:
        G = batch.rewards.shape[1]
        records = []
        for p in range(min(self.cfg.logging.rollouts_per_step, len(batch.samples))):
            sample, group, rows = batch.samples[p], batch.completions[p], range(p * G, (p + 1) * G)
            records.append(
                rollout_record(
                    step=self.step,
                    sample_id=sample.id,
                    images=[str(i) for i in sample.images],
                    prompt=sample.question,
                    answer=sample.answer,
                    texts=[c.text for c in group],
                    rewards={n: [s[i] for i in rows] for n, s in batch.reward_scores.items()},
                    totals=batch.rewards[p].tolist(),
                    advantages=batch.advantages[list(rows)].tolist(),
                    lengths=[c.token_ids.numel() for c in group],
                    finish_reasons=[c.finish_reason for c in group],
                )
            )
        return records


def _behaviour(batch: GroupBatch, rows: list[int], logp: torch.Tensor) -> torch.Tensor:
    """[rows, T] as logp: the sampler's log-prob of each response token (`Completion.logprobs`), 0-padded."""
    out = torch.zeros(len(rows), logp.shape[1], device=logp.device)
    flat = batch.flat
    for i, row in enumerate(rows):
        lp = flat[row].logprobs
        if lp.numel() != flat[row].token_ids.numel():
            n = flat[row].token_ids.numel()
            raise ValueError(f"the rollout backend gave {lp.numel()} log-probs for {n} sampled tokens")
        out[i, : lp.numel()] = lp.to(out.device)
    return out


def _skip_reason(batch: GroupBatch, metrics: dict[str, float]) -> str | None:
    """Why the step made no update (a `skip_reasons` entry), or None when it made one."""
    if not batch.informative:
        return "no_signal"
    return None if math.isfinite(metrics["grad_norm"]) else "nonfinite"


def _select(batch: GroupBatch, keep: list[int]) -> GroupBatch:
    names = batch.reward_scores
    G = batch.rewards.shape[1]
    rows = [p * G + g for p in keep for g in range(G)]
    return GroupBatch(
        samples=[batch.samples[p] for p in keep],
        prompts=[batch.prompts[p] for p in keep],
        completions=[batch.completions[p] for p in keep],
        rewards=batch.rewards[keep],
        reward_scores={n: [s[i] for i in rows] for n, s in names.items()},
    )


def _concat(a: GroupBatch, b: GroupBatch) -> GroupBatch:
    return GroupBatch(
        samples=a.samples + b.samples,
        prompts=a.prompts + b.prompts,
        completions=a.completions + b.completions,
        rewards=torch.cat([a.rewards, b.rewards]),
        reward_scores={n: a.reward_scores[n] + b.reward_scores[n] for n in a.reward_scores},
    )


def _take(batch: GroupBatch, n: int) -> GroupBatch:
    return _select(batch, list(range(min(n, len(batch.samples)))))
