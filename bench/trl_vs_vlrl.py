"""Benchmark: vlrl against TRL's GRPOTrainer on the same tiny VLM, data and settings, in one run.

Both sides start from the same checkpoint: by default a freshly built tiny Qwen2-VL after a short
cold-start SFT on the demo's counting task (vlrl's `sft` with the demo's recipe, `--sft-steps`),
because RL always starts from a model whose answers have a format and end; a random model's
completions almost never stop, which is no workload anyone trains on (`--sft-steps 0` measures it
anyway). Both see the same prompts (vlrl's messages, rendered by the model's chat template on both sides), are scored by the
same reward functions (`vlrl.rewards.REWARDS`: format + accuracy) and train with the same
settings: P prompts x G samples per step, max new tokens, temperature 1, learning rate, constant
schedule, no KL, one on-policy update per step, float32, no gradient checkpointing, no bf16
autocast (TRL's defaults turn both on; they are switched off so the two do the same arithmetic).
Each run trains `--steps` steps; the first step is a warm-up and is not counted.

Printed per side, as the median (and min-max) over `--runs` runs interleaved TRL, vlrl, TRL, ...
so that load from other processes hits both alike:
- rollout samples/s: P*G completions / time in generation (TRL: `_generate`, prompt encoding
  included; vlrl: the rollout phase, prompt encoding included);
- training tokens/s: prompt + completion tokens of the step's P*G sequences / step wall time;
- wall time per step;
and vlrl's speed-up over TRL on each.

`--accuracy` adds the time-to-accuracy comparison on the demo task: from the same cold start each
side trains `--race-steps` steps with the settings above (`--race-prompts`,
`--race-max-new-tokens`) while held-out accuracy is evaluated every `--eval-every` steps (greedy,
vlrl's evaluator on both sides so the number means the same). Reported: training wall time
(evaluation excluded) until held-out accuracy first reaches the cold start's plus `--gain`.

    pip install -e ".[bench]"
    python bench/trl_vs_vlrl.py                 # throughput, 3 runs per side
    python bench/trl_vs_vlrl.py --accuracy      # and time to accuracy
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import torch

from vlrl.config import SFTConfig, TrainConfig, load_config
from vlrl.data.loading import load_samples
from vlrl.data.prompts import build_messages, get_template
from vlrl.models.loading import load_model
from vlrl.models.tiny.factory import build_tiny_model
from vlrl.rewards import REWARDS
from vlrl.synth import generate_dataset

REWARD_NAMES = ("format", "accuracy")
SYSTEM_PROMPT = (
    "Think step by step inside <think> </think>, then give the final answer inside <answer> </answer>."
)


@dataclass
class Workload:
    """What both sides train on: a checkpoint, a train file, and the per-step settings."""

    model: Path
    train: Path
    heldout: Path
    prompts: int
    group: int
    max_new_tokens: int
    lr: float
    steps: int
    seed: int = 0


@dataclass
class RunStats:
    """Per counted step (the warm-up step excluded): seconds in generation, step seconds, tokens."""

    gen_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def summary(self, samples_per_step: int) -> dict[str, float]:
        return {
            "rollout samples/s": samples_per_step * len(self.gen_s) / sum(self.gen_s),
            "training tokens/s": sum(self.tokens) / sum(self.step_s),
            "s/step": statistics.median(self.step_s),
        }


# ---- vlrl ------------------------------------------------------------------------------------------
def vlrl_config(w: Workload, out: Path, extra: list[str] = ()) -> TrainConfig:
    return load_config(
        None,
        [
            f"model.path={w.model}",
            f"data.train={w.train}",
            f"data.eval={{heldout: {w.heldout}}}",
            f"data.system_prompt={SYSTEM_PROMPT!r}",
            f"rollout.group_size={w.group}",
            f"rollout.prompts_per_step={w.prompts}",
            f"rollout.max_new_tokens={w.max_new_tokens}",
            "rollout.temperature=1.0",
            f"reward.functions=[{', '.join(REWARD_NAMES)}]",
            "algo.kl_beta=0.0",
            f"train.steps={w.steps}",
            f"train.lr={w.lr}",
            "train.lr_schedule=constant",
            # TRL runs the whole per-device batch in one forward/backward; give vlrl the same.
            "train.micro_batch_tokens=65536",
            "train.device=cpu",
            f"train.seed={w.seed}",
            f"train.output_dir={out}",
            "train.save_every=0",
            "logging.progress=false",
            *extra,
        ],
        schema=TrainConfig,
    )


def run_vlrl(w: Workload, out: Path) -> RunStats:
    from vlrl.training.grpo import GRPOTrainer

    trainer = GRPOTrainer(vlrl_config(w, out))
    clock = []  # when each step's metrics were logged: the step's end, as TRL's on_log below
    log = trainer.logger.log

    def timed_log(step, metrics):
        log(step, metrics)
        clock.append(time.perf_counter())

    trainer.logger.log = timed_log
    history = trainer.train()
    return RunStats(
        gen_s=[h["timing_s/gen"] for h in history[1:]],
        step_s=[b - a for a, b in pairwise(clock)],
        tokens=[int(h["perf/total_num_tokens"]) for h in history[1:]],
    )


# ---- TRL -------------------------------------------------------------------------------------------
def trl_dataset(train: Path, system_prompt: str | None = SYSTEM_PROMPT):
    """The rows of `train` as TRL conversational prompts with vlrl's exact messages (the
    think_answer template, `system_prompt` None keeping its own), plus the reward columns."""
    from datasets import Dataset
    from PIL import Image

    template = get_template("think_answer", system_prompt=system_prompt)
    samples, _ = load_samples(train)
    rows = []
    for s in samples:
        messages = build_messages(s, template)
        for m in messages:  # TRL's VLM path wants every content as a list of parts
            if isinstance(m["content"], str):
                m["content"] = [{"type": "text", "text": m["content"]}]
        rows.append(
            {
                "prompt": messages,
                "images": [Image.open(p).convert("RGB") for p in s.images],
                **{k: v for k, v in s.fields().items() if k not in ("images", "choices") and v is not None},
            }
        )
    return Dataset.from_list(rows)


def trl_rewards(names: tuple[str, ...] = REWARD_NAMES) -> list[Callable]:
    """vlrl's reward functions with TRL's calling convention (chat completions + dataset columns)."""

    def wrap(name: str) -> Callable:
        def reward(completions, **fields):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return REWARDS[name](texts, answer=fields["answer"], task=fields.get("task"))

        reward.__name__ = name
        return reward

    return [wrap(n) for n in names]


def trl_config(out: Path, **settings):
    """TRL's GRPOConfig as both benchmarks run it (temperature 1, constant lr, a log record every
    step, no checkpoints, no reporting, no progress bar) plus the workload's `settings`."""
    import trl

    return trl.GRPOConfig(
        output_dir=str(out),
        temperature=1.0,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        **settings,
    )


def trl_trainer(w: Workload, out: Path, dataset, callbacks=()):
    import trl
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    class Trainer(trl.GRPOTrainer):
        """TRL's trainer with its generation timed (prompt encoding included, as on vlrl's side)."""

        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            self.bench_gen_s.append(time.perf_counter() - t0)
            return out

    class StepClock(TrainerCallback):
        """When each step's metrics were logged, and the metrics."""

        def __init__(self):
            self.times, self.logs = [], []

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                self.times.append(time.perf_counter())
                self.logs.append(logs)

    args = trl_config(
        out,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=w.prompts * w.group,
        num_generations=w.group,
        max_completion_length=w.max_new_tokens,
        learning_rate=w.lr,
        beta=0.0,
        num_iterations=1,
        max_steps=w.steps,
        seed=w.seed,
    )
    processor = load_model(w.model).processor
    clock = StepClock()
    trainer = Trainer(
        model=str(w.model),
        reward_funcs=trl_rewards(),
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[clock, *callbacks],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.bench_gen_s = []
    return trainer, clock


def run_trl(w: Workload, out: Path, dataset) -> RunStats:
    trainer, clock = trl_trainer(w, out, dataset)
    trainer.train()
    tokens = [int(b["num_tokens"]) - int(a["num_tokens"]) for a, b in pairwise(clock.logs)]
    step_s = [b - a for a, b in pairwise(clock.times)]
    return RunStats(gen_s=trainer.bench_gen_s[1:], step_s=step_s, tokens=tokens)


# ---- time to accuracy ------------------------------------------------------------------------------
@dataclass
class Race:
    """One side's held-out accuracy after `train_s` seconds of training (evaluation excluded)."""

    points: list[tuple[int, float, float]] = field(default_factory=list)  # (step, train_s, acc)

    def time_to(self, threshold: float) -> tuple[int, float] | None:
        return next(((step, s) for step, s, acc in self.points if acc >= threshold), None)


class Evaluator:
    """Greedy held-out accuracy with vlrl's in-training evaluator, for either side's model."""

    def __init__(self, w: Workload, max_new_tokens: int):
        from vlrl.evaluation.intraining import evaluate_during_training
        from vlrl.rollout import HFRolloutBackend

        self.adapter = load_model(w.model).adapter
        self.template = get_template("think_answer", system_prompt=SYSTEM_PROMPT)
        self.samples, _ = load_samples(w.heldout)
        self.max_new_tokens = max_new_tokens
        self._evaluate, self._backend = evaluate_during_training, HFRolloutBackend

    def __call__(self, model) -> float:
        backend = self._backend(model, self.adapter)
        result = self._evaluate(
            backend, self.adapter, self.template, self.samples, self.max_new_tokens, batch_size=256
        )
        return result["acc"]


def race_vlrl(w: Workload, out: Path, evaluate: Evaluator, every: int) -> Race:
    from vlrl.training.grpo import GRPOTrainer

    trainer = GRPOTrainer(vlrl_config(w, out, ["logging.jsonl=false"]))
    race, train_s = Race(), 0.0
    for step in range(every, w.steps + 1, every):
        t0 = time.perf_counter()
        trainer.train(until=step)
        train_s += time.perf_counter() - t0
        race.points.append((step, train_s, evaluate(trainer.model)))
        print(f"  vlrl step {step}: {train_s:.0f} s, held-out acc {race.points[-1][2]:.3f}", flush=True)
    return race


def race_trl(w: Workload, out: Path, dataset, evaluate: Evaluator, every: int) -> Race:
    from transformers import TrainerCallback

    race = Race()

    class EvalClock(TrainerCallback):
        """Evaluates every `every` steps with the training clock stopped."""

        def on_train_begin(self, args, state, control, **kw):
            self.train_s, self.t0 = 0.0, time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % every:
                return
            self.train_s += time.perf_counter() - self.t0
            race.points.append((state.global_step, self.train_s, evaluate(model)))
            print(
                f"  TRL step {state.global_step}: {self.train_s:.0f} s, held-out acc {race.points[-1][2]:.3f}"
            )
            model.train()
            self.t0 = time.perf_counter()

    trainer, _ = trl_trainer(w, out, dataset, callbacks=[EvalClock()])
    trainer.train()
    return race


def cold_start(model: Path, train: Path, out: Path, steps: int) -> Path:
    """The demo's cold-start SFT of `model`, `steps` steps: the checkpoint both sides start from."""
    from vlrl.training.sft import SFTTrainer

    cfg = load_config(
        None,
        [
            f"model.path={model}",
            f"data.train={train}",
            f"data.system_prompt={SYSTEM_PROMPT!r}",
            f"train.steps={steps}",
            "train.lr=2e-3",
            "train.lr_schedule=cosine",
            "train.warmup_steps=5",
            "train.micro_batch_tokens=8192",
            "train.device=cpu",
            f"train.output_dir={out}",
            "sft.batch_size=32",
            "sft.epochs=100",
            "logging.progress=false",
        ],
        schema=SFTConfig,
    )
    sft = SFTTrainer(cfg)
    sft.train()
    return sft.out / "checkpoints" / f"step_{sft.step:06d}"


def time_to_accuracy(w: Workload, tmp: Path, every: int, gain: float) -> dict:
    """Both sides race from `w.model` to its held-out accuracy + `gain`."""
    evaluate = Evaluator(w, w.max_new_tokens)
    base = evaluate(load_model(w.model).model)
    threshold = base + gain
    print(f"cold start: held-out acc {base:.3f}; threshold {threshold:.3f}", flush=True)
    races = {
        "TRL GRPOTrainer": race_trl(w, tmp / "trl_race", trl_dataset(w.train), evaluate, every),
        "vlrl": race_vlrl(w, tmp / "vlrl_race", evaluate, every),
    }
    print(f"\ntime to held-out accuracy {threshold:.3f} (cold start {base:.3f}), training time only:")
    result = {"cold_start": base, "threshold": threshold}
    for name, race in races.items():
        hit = race.time_to(threshold)
        best = max(acc for _, _, acc in race.points)
        result[name] = None if hit is None else hit[1]
        reached = f"step {hit[0]}, {hit[1]:.0f} s" if hit else f"not reached in {w.steps} steps"
        print(f"  {name:18} {reached} (best {best:.3f})")
    return result


# ---- reporting -------------------------------------------------------------------------------------
def versions() -> str:
    import transformers
    import trl

    import vlrl

    return f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, vlrl {vlrl.__version__}"


def print_throughput(w: Workload, results: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Median and range per metric and side, and vlrl's speed-up (ratio of medians); returns the ratios."""
    n = len(results["trl"])
    print(
        f"\n{w.prompts} prompts x G={w.group}, max_new_tokens={w.max_new_tokens}, {w.steps} steps per run "
        f"(first one not counted), {n} runs per side; median [min-max]"
    )
    print(f"{'':22}{'TRL GRPOTrainer':>26}{'vlrl':>26}{'vlrl / TRL':>12}")
    ratios = {}
    for metric in results["trl"][0]:
        cells, medians = [], {}
        for side in ("trl", "vlrl"):
            values = [r[metric] for r in results[side]]
            medians[side] = statistics.median(values)
            cells.append(f"{medians[side]:.2f} [{min(values):.2f}-{max(values):.2f}]")
        # Time per step is better when lower: its speed-up is TRL's time over vlrl's.
        ratio = medians["trl"] / medians["vlrl"] if metric == "s/step" else medians["vlrl"] / medians["trl"]
        ratios[metric] = ratio
        print(f"{metric:22}{cells[0]:>26}{cells[1]:>26}{'x' + format(ratio, '.2f'):>12}")
    return ratios


# ---- main ------------------------------------------------------------------------------------------
def throughput(w: Workload, runs: int, tmp: Path) -> dict[str, float]:
    dataset = trl_dataset(w.train)
    results: dict[str, list[dict[str, float]]] = {"trl": [], "vlrl": []}
    for r in range(runs):
        trl_stats = run_trl(w, tmp / f"trl_{r}", dataset)
        results["trl"].append(trl_stats.summary(w.prompts * w.group))
        vlrl_stats = run_vlrl(w, tmp / f"vlrl_{r}")
        results["vlrl"].append(vlrl_stats.summary(w.prompts * w.group))
        print(f"run {r + 1}/{runs}: TRL {results['trl'][-1]}  vlrl {results['vlrl'][-1]}", flush=True)
    return print_throughput(w, results)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="starting checkpoint (default: a fresh tiny qwen2_vl)")
    p.add_argument(
        "--sft-steps",
        type=int,
        default=150,
        help="cold-start SFT steps from --model before both sides start (0: none; a random model's "
        "completions almost never end, unlike any model RL starts from)",
    )
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--runs", type=int, default=3, help="throughput runs per side (0: skip)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, help="keep the runs here instead of a temporary folder")
    p.add_argument("--accuracy", action="store_true", help="also race both sides to a held-out accuracy")
    p.add_argument("--race-steps", type=int, default=40, help="GRPO steps per side in the race")
    p.add_argument("--race-prompts", type=int, default=16)
    p.add_argument("--race-max-new-tokens", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--gain", type=float, default=0.05, help="threshold = cold-start accuracy + this")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(versions(), f"| {torch.get_num_threads()} threads", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = args.out or Path(tmp_name)
        model = args.model or build_tiny_model("qwen2_vl", tmp / "model", size="tiny")
        data = generate_dataset("counting", 2300, tmp / "data", seed=0, heldout=300)
        if args.sft_steps:
            print(
                f"\ncold-start SFT of {model}, {args.sft_steps} steps: both sides start from it", flush=True
            )
            model = cold_start(model, data["train"], tmp / "sft", args.sft_steps)
        w = Workload(
            model=model,
            train=data["train"],
            heldout=data["heldout"],
            prompts=args.prompts,
            group=args.group,
            max_new_tokens=args.max_new_tokens,
            lr=args.lr,
            steps=args.steps,
        )
        result = {"ratios": throughput(w, args.runs, tmp)} if args.runs else {}
        if args.accuracy:
            race = Workload(
                **{
                    **w.__dict__,
                    "prompts": args.race_prompts,
                    "max_new_tokens": args.race_max_new_tokens,
                    "steps": args.race_steps,
                }
            )
            result["time_to_accuracy"] = time_to_accuracy(race, tmp, args.eval_every, args.gain)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
