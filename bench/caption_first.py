"""Benchmark: caption-first (MoERL-Vision) vs think-only prompting, GRPO on the tiny DeepSeek-VL2.

MoERL-Vision makes the model describe the image before reasoning: the prompt asks for
`<caption>...</caption><think>...</think><answer>...</answer>` and a format reward holds the model
to it. This measures whether that helps held-out accuracy over the R1 layout
`<think>...</think><answer>...</answer>`, everything else equal. Two arms, per seed:
- `caption-first`: template caption_think_answer, rewards [caption_format, accuracy];
- `think-only`: template think_answer, rewards [format, accuracy].
Each template's request is put in one line for the tiny model (`SYSTEM_PROMPTS`).

Each arm is a cold-start SFT (`--sft-steps`, a tiny random model cannot write any format, so RL
alone never gets a reward) and then GRPO (`--steps`), both with vlrl's own trainers, from the same
tiny model (the factory's `--family`, built with the seed) on the same synthetic task (`--task`,
generated with the seed), with the same steps, batches, learning rates and train.seed. The two
SFT targets hold the same text, laid out for each template as vlrl's cold-start pipeline writes
them (`vlrl.coldstart.pipeline.SOLUTION_LAYOUTS`): the generator's description of the image in
<caption> and its reasoning in <think> (caption-first), or both in <think> (think-only).

The in-training evaluation runs on the held-out split (train.eval_every, as MoERL-Vision embeds it
in training): greedy accuracy, accuracy of `--eval-samples` answers sampled at temperature 1, and
each arm's own format rate (caption_format / format), at the start of GRPO ("before", right after
the SFT) and at its end ("after"). The training reward (total and accuracy) is the mean of the
first and last `--window` steps. Printed: one row per run, then the means over seeds and the
caption-first minus think-only differences; the last line is the result as JSON.

    python bench/caption_first.py --threads 1 --sft-steps 4 --steps 2     # smoke size
    python bench/caption_first.py --seeds 2                   # the README's measurement: seeds 0 and 1,
    python bench/caption_first.py --first-seed 2 --seeds 2    # and seeds 2 and 3
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vlrl.coldstart.pipeline import SOLUTION_LAYOUTS
from vlrl.config import SFTConfig, TrainConfig, load_config
from vlrl.io import read_jsonl, write_jsonl
from vlrl.models.tiny.factory import FAMILIES, SIZES, build_tiny_model
from vlrl.synth import generate_dataset
from vlrl.synth.tasks import TASKS

ARMS = {
    "caption-first": ("caption_think_answer", "caption_format"),
    "think-only": ("think_answer", "format"),
}
"""arm -> (prompt template, format reward)."""
SYSTEM_PROMPTS = {
    "caption-first": "Describe the image in <caption> </caption>, reason in <think> </think>, then answer in "
    "<answer> </answer>.",
    "think-only": "Describe the image in <think> </think>, then answer in <answer> </answer>.",
}
"""Each template's request in one line, as `vlrl demo` words the R1 one for the tiny model: the
templates' own system prompts are 250 tokens of the tiny tokenizer, which would make every prompt
three times as long (and every step about that much slower) without telling a tiny model more."""
TARGET = "sft_target"  # the row field each arm's data file holds its SFT target in
EVAL_KEYS = ("acc", "pass@1", "format", "sampled_format")
_THINK = re.compile(r"<think>(.*)</think><answer>(.*)</answer>", re.DOTALL)


# ---- data --------------------------------------------------------------------------------------
def sft_target(row: dict, template: str) -> str:
    """A synthetic row's cold-start target laid out for `template`: the generator's caption and
    reasoning, from its R1-layout `solution` (`<think>caption steps</think><answer>a</answer>`).

    >>> row = {"caption": "Two red squares.", "solution": "<think>Two red squares. So 2.</think><answer>2</answer>"}
    >>> sft_target(row, "caption_think_answer")
    '<caption>Two red squares.</caption><think>So 2.</think><answer>2</answer>'
    >>> sft_target(row, "think_answer") == row["solution"]
    True
    """
    match = _THINK.fullmatch(row["solution"])
    if match is None or not match.group(1).startswith(row["caption"]):
        raise ValueError(
            f"row {row.get('id')}: solution is not <think>caption ...</think><answer>...</answer>"
        )
    think, answer = match.groups()
    reasoning = think[len(row["caption"]) :].strip()
    return SOLUTION_LAYOUTS[template].text.format(
        description=row["caption"], reasoning=reasoning, answer=answer
    )


def arm_files(files: dict[str, Path], template: str) -> dict[str, Path]:
    """The task's train / heldout files with each row's SFT target for `template` (beside the
    originals, so that relative image paths still resolve)."""
    out = {}
    for split, path in files.items():
        rows = [row | {TARGET: sft_target(row, template)} for row in read_jsonl(path)]
        out[split] = path.with_name(f"{path.stem}.{template}.jsonl")
        write_jsonl(out[split], rows)
    return out


# ---- runs --------------------------------------------------------------------------------------
def _common(args, arm: str, data: dict[str, Path], seed: int) -> list[str]:
    template, _ = ARMS[arm]
    return [
        f"data.train={data['train']}",
        f"data.eval={{heldout: {data['heldout']}}}",
        f"data.template={template}",
        f"data.system_prompt={SYSTEM_PROMPTS[arm]!r}",
        f"data.max_prompt_length={args.max_prompt_length}",
        "train.device=cpu",
        f"train.seed={seed}",
        "train.save_every=0",
        "logging.progress=false",
        f"model.freeze={args.freeze}",
    ]


def sft_config(args, arm: str, model: Path, data: dict[str, Path], out: Path, seed: int) -> SFTConfig:
    """The cold start: `--sft-steps` steps on the arm's targets (the demo's learning rates)."""
    overrides = [
        *_common(args, arm, data, seed),
        f"model.path={model}",
        f"sft.target_field={TARGET}",
        f"sft.batch_size={args.sft_batch}",
        f"train.steps={args.sft_steps}",
        "train.lr=1e-3",
        "model.group_lr={vision: 6e-3}",
        "train.lr_schedule=constant",
        f"train.warmup_steps={min(5, args.sft_steps)}",
        "train.micro_batch_tokens=8192",
        "train.eval_every=0",
        f"train.output_dir={out}",
    ]
    return load_config(None, overrides, schema=SFTConfig)


def grpo_config(args, arm: str, model: Path, data: dict[str, Path], out: Path, seed: int) -> TrainConfig:
    """GRPO with the arm's format reward plus accuracy, evaluated on the held-out split."""
    _, format_reward = ARMS[arm]
    overrides = [
        *_common(args, arm, data, seed),
        f"model.path={model}",
        f"reward.functions=[{format_reward}, accuracy]",
        # quoted: YAML reads a bare `off` as the boolean false
        f"model.routing_replay='{args.routing_replay}'",
        f"rollout.group_size={args.group}",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "rollout.temperature=1.0",
        "algo.advantage=grpo",
        "algo.kl_beta=0.0",
        f"train.steps={args.steps}",
        "train.lr=1e-4",
        "model.group_lr={vision: 1e-3}",
        "train.lr_schedule=constant",
        "train.micro_batch_tokens=16384",
        f"train.eval_every={args.eval_every or args.steps}",
        f"train.eval_samples={args.eval_samples}",
        "train.eval_pass_k=[1]",
        f"train.eval_batch_size={args.eval_batch}",
        "logging.rollouts_every=0",
        f"train.output_dir={out}",
    ]
    return load_config(None, overrides, schema=TrainConfig)


def _scores(metrics: dict) -> dict[str, float]:
    return {k: metrics[f"eval/heldout/{k}"] for k in EVAL_KEYS}


def run_arm(args, arm: str, model: Path, data: dict[str, Path], out: Path, seed: int) -> dict:
    """SFT then GRPO for one arm and seed: held-out scores before / after, rewards, minutes."""
    from vlrl.training.grpo import GRPOTrainer
    from vlrl.training.sft import SFTTrainer

    t0 = time.perf_counter()
    sft = SFTTrainer(sft_config(args, arm, model, data, out / "sft", seed))
    sft.train()
    cold_start = sft.out / "checkpoints" / f"step_{sft.step:06d}"
    rl = GRPOTrainer(grpo_config(args, arm, cold_start, data, out / "grpo", seed))
    before = _scores(rl.evaluate())
    history = rl.train()
    evals = [h for h in history if "eval/heldout/acc" in h]
    if not evals or evals[-1]["step"] != rl.step:
        evals.append({"step": rl.step, **rl.evaluate()})
    return {
        "before": before,
        "after": _scores(evals[-1]),
        "evals": [{"step": 0, **before}] + [{"step": h["step"], **_scores(h)} for h in evals],
        "reward": [h["reward/total/mean"] for h in history],
        "accuracy_reward": [h["reward/accuracy/mean"] for h in history],
        "minutes": (time.perf_counter() - t0) / 60,
    }


# ---- report ------------------------------------------------------------------------------------
def summarize(run: dict, window: int) -> dict[str, float]:
    """One run as flat numbers: held-out scores before / after, first / last `window` steps'
    mean training reward (total and accuracy), minutes.

    >>> r = {"before": {"acc": 0.25}, "after": {"acc": 0.5}, "reward": [0.0, 1.0, 2.0],
    ...      "accuracy_reward": [0.0, 0.0, 1.0], "minutes": 1.5}
    >>> summarize(r, 2)
    {'acc before': 0.25, 'acc after': 0.5, 'reward first': 0.5, 'reward last': 1.5, 'accuracy reward first': 0.0, 'accuracy reward last': 0.5, 'minutes': 1.5}
    """
    out = {}
    for key in run["before"]:
        out[f"{key} before"], out[f"{key} after"] = run["before"][key], run["after"][key]
    for name, values in (("reward", run["reward"]), ("accuracy reward", run["accuracy_reward"])):
        out[f"{name} first"] = statistics.fmean(values[:window])
        out[f"{name} last"] = statistics.fmean(values[-window:])
    out["minutes"] = run["minutes"]
    return out


def mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """Column means of summaries with the same keys.

    >>> mean_rows([{"a": 1.0, "b": 0.0}, {"a": 2.0, "b": 1.0}])
    {'a': 1.5, 'b': 0.5}
    """
    return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}


COLUMNS = (
    ("greedy acc", "acc"),
    ("sampled acc", "pass@1"),
    ("format greedy", "format"),
    ("format sampled", "sampled_format"),
)


def table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """One line per run: each held-out score before -> after, training reward first -> last window."""
    head = f"{'run':28}" + "".join(f"{name:>16}" for name, _ in COLUMNS)
    head += f"{'reward':>14}{'acc reward':>14}{'min':>6}"
    lines = [head]
    for label, s in rows:
        cells = "".join(f"{s[f'{k} before']:>7.3f}->{s[f'{k} after']:<7.3f}" for _, k in COLUMNS)
        rewards = "".join(
            f"{s[f'{k} first']:>6.2f}->{s[f'{k} last']:<6.2f}" for k in ("reward", "accuracy reward")
        )
        lines.append(f"{label:28}{cells}{rewards}{s['minutes']:>6.1f}")
    return "\n".join(lines)


def differences(caption: dict[str, float], think: dict[str, float]) -> dict[str, float]:
    """caption-first minus think-only, for every held-out score after GRPO and its gain over GRPO.

    >>> differences({"acc before": 0.2, "acc after": 0.5}, {"acc before": 0.3, "acc after": 0.4})
    {'acc after': 0.1, 'acc gain': 0.2}
    """
    out = {}
    for key in [k.removesuffix(" after") for k in caption if k.endswith(" after")]:
        out[f"{key} after"] = round(caption[f"{key} after"] - think[f"{key} after"], 12)
        gain = (caption[f"{key} after"] - caption[f"{key} before"]) - (
            think[f"{key} after"] - think[f"{key} before"]
        )
        out[f"{key} gain"] = round(gain, 12)
    return out


# ---- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="deepseek_vl2", help="tiny-model family (default: deepseek_vl2)")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny", help="tiny-model size")
    p.add_argument("--task", choices=sorted(TASKS), default="count_shapes", help="synthetic task")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-heldout", type=int, default=100)
    p.add_argument(
        "--seeds", type=int, default=1, help="runs per arm: seed 0, 1, ... (model, data, training)"
    )
    p.add_argument("--first-seed", type=int, default=0, help="the first seed (more seeds in another run)")
    p.add_argument("--sft-steps", type=int, default=250)
    p.add_argument("--sft-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=100, help="GRPO steps")
    p.add_argument("--prompts", type=int, default=8, help="prompts per GRPO step")
    p.add_argument("--group", type=int, default=8, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument(
        "--eval-every", type=int, default=25, help="GRPO steps between evaluations (0: at the end)"
    )
    p.add_argument("--eval-samples", type=int, default=4, help="sampled answers per held-out item")
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--window", type=int, default=10, help="steps averaged for the first / last reward")
    p.add_argument("--freeze", default="[router]", help="model.freeze of every run (a MoE's router)")
    p.add_argument("--routing-replay", choices=("off", "R2", "R3"), default="R3", help="model.routing_replay")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument(
        "--out", type=Path, help="keep the model, data and runs here instead of a temporary folder"
    )
    args = p.parse_args(argv)
    for name in ("n_train", "n_heldout", "seeds", "sft_steps", "steps", "prompts", "group", "eval_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.first_seed < 0:
        p.error("--first-seed must be >= 0")
    if args.group < 2:
        p.error("--group must be at least 2: GRPO compares the samples of a prompt")
    if args.family not in FAMILIES:
        p.error(f"--family {args.family}: the tiny-model factory has {', '.join(sorted(FAMILIES))}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns {"runs": {arm: [per seed]}, "means", "differences", "settings"}."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; tiny {args.family} ({args.size}), "
          f"task {args.task} ({args.n_train} train, {args.n_heldout} held out); SFT {args.sft_steps} steps of "
          f"{args.sft_batch}; GRPO {args.steps} steps of {args.prompts} prompts x {args.group}, "
          f"{args.max_new_tokens} new tokens; seeds {args.first_seed}..{args.first_seed + args.seeds - 1}", flush=True)  # fmt: skip
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp_name:
        root = args.out or Path(tmp_name)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            model = build_tiny_model(args.family, root / f"seed_{seed}" / "model", size=args.size, seed=seed)
            files = generate_dataset(
                args.task, args.n_train + args.n_heldout, root / f"seed_{seed}" / "data", seed, args.n_heldout
            )
            for arm, (template, _) in ARMS.items():
                run = run_arm(args, arm, model, arm_files(files, template), root / f"seed_{seed}" / arm, seed)
                extra = {"seed": seed, "per_step_reward": run["reward"], "evals": run["evals"]}
                runs[arm].append(summarize(run, args.window) | extra)
                s = runs[arm][-1]
                print(f"seed {seed} {arm}: greedy acc {s['acc before']:.3f} -> {s['acc after']:.3f}, sampled "
                      f"{s['pass@1 before']:.3f} -> {s['pass@1 after']:.3f}, format {s['format before']:.3f} -> "
                      f"{s['format after']:.3f} ({s['minutes']:.1f} min)", flush=True)  # fmt: skip
    flat = {
        arm: [{k: v for k, v in r.items() if k not in ("seed", "per_step_reward", "evals")} for r in rs]
        for arm, rs in runs.items()
    }
    means = {arm: mean_rows(rows) for arm, rows in flat.items()}
    rows = [(f"seed {r['seed']} {arm}", f) for arm in ARMS for r, f in zip(runs[arm], flat[arm], strict=True)]
    rows += [(f"mean {arm}", means[arm]) for arm in ARMS]
    print(f"\nheld-out split ({args.n_heldout} items): before = after the SFT (GRPO step 0), after = GRPO step "
          f"{args.steps}; sampled = {args.eval_samples} answers at temperature 1; format = each arm's own "
          f"(caption_format / format); reward = training reward, first -> last {args.window} steps")  # fmt: skip
    print(table(rows))
    diff = differences(means["caption-first"], means["think-only"])
    print("\ncaption-first minus think-only (means over seeds; 'gain' = difference of the GRPO gains):")
    print("  " + ", ".join(f"{k} {v:+.3f}" for k, v in diff.items()))
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {"runs": runs, "means": means, "differences": diff, "settings": settings}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
