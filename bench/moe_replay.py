"""Benchmark: does routing replay (R3) learn at least as well as no replay, on a tiny MoE VLM with
the MoE GRPO preset? One run, same model, data, rewards and seeds for every arm.

Arms, each vlrl's GRPOTrainer for `--steps` steps from the factory's tiny `qwen3_vl_moe` (4
experts, top-2), back to back, `--seeds` times (train.seed 0, 1, ...; arms interleaved per seed):
- `R3`: configs/grpo_moe_preset_tiny.yaml as shipped (GSPO, frozen float32 router, no
  load-balancing loss, model.routing_replay R3);
- `off`: the same preset with model.routing_replay off, nothing else changed;
- `plain` (`--plain`): GRPO with the config's defaults instead of the preset (token-level clipped
  ratio, router trained, no replay; float32 router and no load-balancing loss are the defaults
  too), same task, lr and seeds.

Only the task, the sizes, the learning rate and the run's bookkeeping are overridden in the preset.
The task is the RL tests' has-"e" task (a reward of 1 for answers containing the letter "e"), on
which the random tiny policy already earns about half the time, so no cold start is needed and
rewards are informative from the first step; `--reward distinct` uses moe_step.py's graded reward.

Rollout and training must route differently for replay to matter. With the `hf` backend both run
the same module in the same dtype; they differ only in how the passes are cut (the rollout
prefills the shared prompt once and decodes token by token from its KV cache, the update scores
each response in one pass), which changes float32 accumulation order and can flip a near-tied
top-k choice. `--router-noise s` (0 by default) makes the difference on purpose, as issue 21
suggests ("perturb the router between rollout and update"): around every rollout each router's
weight gets Gaussian noise of std s x that weight's std, and is restored bit for bit before the
update (the router is frozen by the preset; the noise comes from one seeded generator, so every arm
sees the same perturbations). The training side never sees the noise: under R3 it replays the
perturbed rollout's expert choices, without replay it routes by itself.

Printed per arm: the mean reward of every step and its means over 10-step windows; the policy's
expected reward before and after training (16 held-out prompts x 8 samples at a fixed sampling
seed, unperturbed routers: like `policy_reward` in tests/training/test_grpo.py);
`moe/route_mismatch` per step (the fraction of (token, layer) routes of the update's first pass
whose expert set differs from the rollout's: 0 under R3 by construction); the sampler-vs-trainer
log-prob gap (`mismatch/log_ratio_mean_abs`); the expert-load metrics of the last step; the alarms
the run raised. With several seeds these are means over the seeds (each seed's own in the JSON).
Then the ratios R3 / off of the final rewards (last window's mean reward, and held-out reward
after), of the means and per seed. The last line is the result as JSON.

    python bench/moe_replay.py --threads 1                          # micro size, 40 steps
    python bench/moe_replay.py --threads 1 --size tiny --reward distinct --lr 1e-3 --router-noise 0.05 \
        --plain --seeds 3                                           # the README's measurement
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from vlrl.config import TrainConfig, load_config
from vlrl.models.tiny.factory import FAMILIES, SIZES, build_tiny_model
from vlrl.rollout import SamplingParams
from vlrl.synth import generate_dataset

MOE_FAMILY = "qwen3_vl_moe"
PRESET = Path(__file__).resolve().parents[1] / "configs" / "grpo_moe_preset_tiny.yaml"
REWARD_FILE = """
def has_e(completions, **fields):
    return [1.0 if "e" in c else 0.0 for c in completions]

def distinct(completions, **fields):
    return [len(set(c)) / 8 for c in completions]
"""
WINDOW = 10  # steps per window of the smoothed curve
HELDOUT, EVAL_GROUP, EVAL_SEED = 16, 8, 1234
LOAD_KEYS = ("moe/load_max_over_mean", "moe/load_cv", "moe/router_entropy", "moe/dead_experts")


# ---- runs --------------------------------------------------------------------------------------
def arm_config(
    args, arm: str, model: Path, data: Path, reward: Path, out: Path, seed: int = 0
) -> TrainConfig:
    """The preset with routing replay R3 or off, or (`plain`) the defaults: plain GRPO; `seed`
    seeds the run (sampling, data order)."""
    overrides = [
        f"model.path={model}",
        f"data.train={data}",
        "data.template=answer_only",
        "data.system_prompt=Answer.",
        f"rollout.group_size={args.group}",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"reward.functions=['{reward}:{args.reward}']",
        f"train.steps={args.steps}",
        f"train.seed={seed}",
        "train.device=cpu",
        "train.save_every=0",
        f"train.output_dir={out}",
        "logging.progress=false",
        "logging.rollouts_every=0",
    ]
    if args.lr is not None:
        overrides.append(f"train.lr={args.lr}")
    if arm == "plain":
        lr = [] if args.lr is not None else [f"train.lr={preset_lr()}"]
        return load_config(None, [*overrides, *lr, "train.lr_schedule=constant"], schema=TrainConfig)
    # Quoted: YAML reads a bare `off` as the boolean false.
    return load_config(PRESET, [*overrides, f"model.routing_replay='{arm}'"], schema=TrainConfig)


def preset_lr() -> float:
    return load_config(PRESET, [], schema=TrainConfig).train.lr


def router_weights(trainer) -> list[torch.Tensor]:
    return [p for _, m in trainer.adapter.routers(trainer.rollout_model) for p in m.parameters()]


@contextmanager
def perturbed_routers(weights: list[torch.Tensor], scale: float, gen: torch.Generator):
    """Each router weight plus Gaussian noise of std `scale` x its std, restored exactly after."""
    if not scale:
        yield
        return
    saved = [w.detach().clone() for w in weights]
    with torch.no_grad():
        for w in weights:
            w.add_(torch.randn(w.shape, generator=gen, dtype=w.dtype) * (scale * w.std()))
    try:
        yield
    finally:
        with torch.no_grad():
            for w, s in zip(weights, saved, strict=True):
                w.copy_(s)


def policy_reward(trainer, heldout, generate) -> float:
    """Mean reward of the held-out prompts x EVAL_GROUP samples at a fixed seed (unperturbed)."""
    prompts = [trainer.adapter.encode(s, trainer.template) for s in heldout]
    n = trainer.cfg.rollout.max_new_tokens
    params = SamplingParams(group_size=EVAL_GROUP, max_new_tokens=n, temperature=1.0, seed=EVAL_SEED)
    return trainer.scorer.score(heldout, generate(prompts, params), n)[0].mean().item()


def run_arm(config: TrainConfig, heldout_file: Path, noise: float, seed: int = 0) -> dict:
    """One training run: per-step metrics, held-out reward before / after, alarms raised."""
    from vlrl.training.grpo import GRPOTrainer
    from vlrl.training.setup import load_data

    trainer = GRPOTrainer(config)
    heldout, _ = load_data([str(heldout_file)], trainer.cfg.data, trainer.adapter, trainer.template)
    generate = trainer.backend.generate
    weights, gen = router_weights(trainer), torch.Generator().manual_seed(7 + seed)

    def noisy_generate(prompts, params):
        with perturbed_routers(weights, noise, gen):
            return generate(prompts, params)

    trainer.backend.generate = noisy_generate  # this trainer's rollouts only; evaluation calls `generate`
    before = policy_reward(trainer, heldout, generate)
    history = trainer.train()
    after = policy_reward(trainer, heldout, generate)
    alarms_file = Path(config.train.output_dir) / "alarms.jsonl"
    alarms = (
        [json.loads(line) for line in alarms_file.read_text().splitlines()] if alarms_file.exists() else []
    )
    return {"history": history, "before": before, "after": after, "alarms": alarms}


# ---- report ------------------------------------------------------------------------------------
def windows(values: list[float], size: int = WINDOW) -> list[float]:
    """Means of consecutive `size`-step windows (the last one may be shorter).

    >>> windows([1.0, 2.0, 3.0, 4.0, 5.0], 2)
    [1.5, 3.5, 5.0]
    """
    return [statistics.fmean(values[i : i + size]) for i in range(0, len(values), size)]


def summarize(run: dict) -> dict:
    """One run's curves, held-out rewards, route mismatch, last expert load and alarms."""
    h = run["history"]
    rewards = [x["reward/total/mean"] for x in h]
    last = h[-1]
    return {
        "reward": rewards,
        "reward_windows": windows(rewards),
        "heldout_before": run["before"],
        "heldout_after": run["after"],
        "route_mismatch": [x.get("moe/route_mismatch") for x in h],
        "log_ratio_mean_abs": [x.get("mismatch/log_ratio_mean_abs") for x in h],
        "expert_load": {k: v for k, v in last.items() if k in LOAD_KEYS or k.startswith("moe/layer_")},
        "alarms": [f"step {a['step']} {a['name']}" for a in run["alarms"]],
    }


def mean_over_seeds(runs: list[dict]) -> dict:
    """The per-seed summaries of one arm averaged element-wise (alarms listed by seed); each
    seed's own under "per_seed"."""

    def mean(values):
        if isinstance(values[0], list):
            return [None if None in v else statistics.fmean(v) for v in zip(*values, strict=True)]
        if isinstance(values[0], dict):
            return {k: statistics.fmean(v[k] for v in values) for k in values[0]}
        return statistics.fmean(values)

    out = {k: mean([r[k] for r in runs]) for k in runs[0] if k != "alarms"}
    out["alarms"] = [f"seed {i}: {a}" for i, r in enumerate(runs) for a in r["alarms"]]
    out["per_seed"] = runs
    return out


def fmt(values: list[float | None], digits: int = 3) -> str:
    return " ".join("-" if v is None else f"{v:.{digits}f}" for v in values)


def print_arm(arm: str, s: dict) -> None:
    print(f"\n[{arm}]")
    print(f"  reward per step         {fmt(s['reward'], 2)}")
    print(f"  reward per {WINDOW}-step window {fmt(s['reward_windows'])}")
    print(f"  held-out reward         before {s['heldout_before']:.3f}  after {s['heldout_after']:.3f}")
    mismatch = [v for v in s["route_mismatch"] if v is not None]
    print(f"  moe/route_mismatch      {fmt(s['route_mismatch'], 4)}")
    if mismatch:
        print(f"                          mean {statistics.fmean(mismatch):.4f}  max {max(mismatch):.4f}  "
              f"steps > 0: {sum(v > 0 for v in mismatch)}/{len(mismatch)}")  # fmt: skip
    gaps = [v for v in s["log_ratio_mean_abs"] if v is not None]
    if gaps:
        print(f"  |log pi_sampler - log pi_train| per token: mean over steps {statistics.fmean(gaps):.2e}, "
              f"max {max(gaps):.2e}")  # fmt: skip
    print(
        "  expert load, last step  "
        + "  ".join(f"{k.removeprefix('moe/')} {v:.3f}" for k, v in s["expert_load"].items())
    )
    print(f"  alarms                  {', '.join(s['alarms']) or 'none'}")


def ratios(a: dict, b: dict) -> dict[str, float]:
    """a / b of the final rewards: the last window's mean reward, and the held-out reward after."""
    div = lambda x, y: x / y if y else float("nan")  # noqa: E731
    return {
        "last window reward R3/off": div(a["reward_windows"][-1], b["reward_windows"][-1]),
        "held-out after R3/off": div(a["heldout_after"], b["heldout_after"]),
    }


# ---- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="micro", help="tiny-model size")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    p.add_argument("--reward", choices=("has_e", "distinct"), default="has_e")
    p.add_argument("--router-noise", type=float, default=0.0,
                   help="router weight noise during rollouts, in units of each weight's std (0: none)")  # fmt: skip
    p.add_argument(
        "--seeds", type=int, default=1, help="runs per arm, train.seed 0, 1, ... (arms interleaved)"
    )
    p.add_argument("--plain", action="store_true", help="add the arm `plain`: GRPO without the preset")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument(
        "--out", type=Path, help="keep the model, data and runs here instead of a temporary folder"
    )
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.router_noise < 0:
        p.error("--router-noise must be >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns {"arms": {arm: summary}, "ratios", "ratios_per_seed", "settings"}."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if MOE_FAMILY not in FAMILIES:
        raise SystemExit(f"moe_replay: the tiny-model factory has no {MOE_FAMILY} family")
    arms = ["R3", "off"] + (["plain"] if args.plain else [])
    lr = args.lr if args.lr is not None else preset_lr()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {MOE_FAMILY} size {args.size}; "
          f"{args.steps} steps of {args.prompts} prompts x {args.group}, {args.max_new_tokens} new tokens, "
          f"reward {args.reward}, lr {lr:g}, router noise {args.router_noise:g}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_name:
        root = args.out or Path(tmp_name)
        model = build_tiny_model(MOE_FAMILY, root / "models" / MOE_FAMILY, size=args.size)
        n = max(2 * args.prompts * args.steps, 32)
        data = generate_dataset("counting", n + HELDOUT, root / "data", seed=0, heldout=HELDOUT)
        reward = root / "rewards.py"
        reward.write_text(REWARD_FILE)
        runs: dict[str, list[dict]] = {arm: [] for arm in arms}
        for seed in range(args.seeds):
            for arm in arms:
                out = root / "runs" / arm / f"seed_{seed}"
                config = arm_config(args, arm, model, data["train"], reward, out, seed)
                runs[arm].append(summarize(run_arm(config, data["heldout"], args.router_noise, seed)))
                print(f"seed {seed} {arm}: reward per window {fmt(runs[arm][-1]['reward_windows'])}, "
                      f"held-out {runs[arm][-1]['heldout_before']:.3f} -> {runs[arm][-1]['heldout_after']:.3f}",
                      flush=True)  # fmt: skip
    summary = {arm: mean_over_seeds(r) for arm, r in runs.items()}
    if args.seeds > 1:
        print(f"\nmeans over {args.seeds} seeds (each seed's numbers under per_seed in the JSON)")
    for arm, s in summary.items():
        print_arm(arm, s)
    result = {
        "arms": summary,
        "ratios": ratios(summary["R3"], summary["off"]),
        "ratios_per_seed": [ratios(a, b) for a, b in zip(runs["R3"], runs["off"], strict=True)],
        "settings": vars(args) | {"lr": lr, "out": str(args.out)},
    }
    print("\nratios of final rewards, R3 over off (>= 1: replay learns at least as well); per seed in []:")
    for name, value in result["ratios"].items():
        per_seed = " ".join(f"{r[name]:.3f}" for r in result["ratios_per_seed"])
        print(f"  {name:28}x{value:.3f}  [{per_seed}]")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
