"""What ends or skips a step, and what the user sees: non-finite steps, signals, resume checks,
dynamic sampling without signal, unwritable folders — each on a tiny end-to-end run."""

from __future__ import annotations

import errno
import json
import signal
from pathlib import Path

import pytest
import torch
from helpers_rl import COMMON, has_e_args, rl_workspace
from safetensors.torch import load_file

from vlrl.cli import main
from vlrl.config import SFTConfig, TrainConfig, load_config
from vlrl.monitoring.alarms import read_alarms
from vlrl.synth import generate_dataset
from vlrl.training.checkpoint import STATE_FILE, config_differences, latest_checkpoint
from vlrl.training.grpo import GRPOTrainer
from vlrl.training.guards import Diverged
from vlrl.training.sampler import PromptSampler
from vlrl.training.sft import SFTTrainer

# The run folder's files, by the names users see.
ALARMS_FILE, ROLLOUTS_FILE = "alarms.jsonl", "rollouts.jsonl"

REWARD_FILE = """
import os
from pathlib import Path

def has_e(completions, **fields):
    return [1.0 if "e" in c else 0.0 for c in completions]

def constant(completions, **fields):
    return [1.0 for _ in completions]

def odd_answers_only(completions, answer, **fields):
    # Groups of even answers score all alike (no signal); the others alternate 0, 1 in the group.
    return [float(int(a) % 2 == 1 and i % 2 == 1) for i, a in enumerate(answer)]

def signal_at_second_call(completions, **fields):
    # Sends itself the signal named in signal.txt while step 2 is scored; once per folder.
    calls = Path(__file__).with_name("calls.txt")
    n = int(calls.read_text()) + 1 if calls.exists() else 1
    calls.write_text(str(n))
    if n == 2:
        os.kill(os.getpid(), int(Path(__file__).with_name("signal.txt").read_text()))
    return [1.0 if "e" in c else 0.0 for c in completions]
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_models):
    return rl_workspace(tmp_path_factory.mktemp("hardening"), REWARD_FILE, tiny_models["qwen2_vl"])


def rl_config(ws, out, *overrides) -> TrainConfig:
    return load_config(
        None,
        [*has_e_args(ws["model"], ws["data"]["train"], ws["reward"], out), *overrides],
        schema=TrainConfig,
    )


def config_file(ws, folder: Path, reward: Path, out: Path) -> Path:
    """A `vlrl train` YAML: 4 steps of 2 prompts x 2 answers, saving every 2 steps."""
    path = folder / "cfg.yaml"
    path.write_text(
        f"model: {{path: {ws['model']}}}\n"
        f"data: {{train: {ws['data']['train']}, template: answer_only}}\n"
        "rollout: {group_size: 2, prompts_per_step: 2, max_new_tokens: 4}\n"
        f"reward: {{functions: ['{reward}']}}\n"
        f"train: {{steps: 4, save_every: 2, device: cpu, output_dir: {out}}}\n"
        "logging: {progress: false}\n"
    )
    return path


def poison_gradients(trainer, steps: set[int]) -> dict[int, dict[str, torch.Tensor]]:
    """Make the gradients of the steps in `steps` (1-based) NaN, through a hook on the output
    embedding; returns {step: the weights as that step's backward found them}, filled as it runs."""
    before = {}

    def hook(grad):
        step = trainer.step + 1
        if step not in steps:
            return grad
        before.setdefault(step, weights(trainer))
        return grad * float("nan")

    trainer.model.get_output_embeddings().weight.register_hook(hook)
    return before


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


# ---- 1. non-finite losses and gradients -----------------------------------------------------


def test_nonfinite_steps_are_skipped_counted_alarmed_and_stop_the_run(workspace, tmp_path):
    trainer = GRPOTrainer(rl_config(workspace, tmp_path, "train.steps=6", "train.max_nonfinite_skips=3"))
    # Step 2 alone, then 4, 5 and 6 in a row: the third of those stops the run.
    before = poison_gradients(trainer, {2, 4, 5, 6})
    with pytest.raises(Diverged, match=r"stopped at step 6: the last 3 steps .*train\.max_nonfinite_skips=3"):
        trainer.train()
    logged = records(tmp_path / "metrics.jsonl")
    assert [r["train/skipped_nonfinite"] for r in logged] == [0, 1, 0, 1, 1, 1]
    assert [r["train/skipped_nonfinite_total"] for r in logged] == [0, 1, 1, 2, 3, 4]
    # Steps 4-6 left the weights as step 3 made them.
    after = weights(trainer)
    assert all(torch.equal(after[n], w) for n, w in before[4].items())
    assert all(torch.equal(before[5][n], w) for n, w in before[4].items())
    assert all(torch.isfinite(w).all() for w in after.values())
    # The schedule moved on at every step, skipped or not.
    assert trainer.scheduler.last_epoch == 6
    alarms = [a for a in read_alarms(tmp_path / ALARMS_FILE) if a.name == "nonfinite_step"]
    assert [a.step for a in alarms] == [2, 4] and alarms[0].severity == "critical"
    assert latest_checkpoint(tmp_path) is None


def test_a_learning_rate_of_1e10_stops_with_a_message_and_saves_no_nan(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = config_file(workspace, tmp_path, f"{workspace['reward']}:has_e", out)
    assert main(["train", str(cfg), "train.lr=1e10", "train.steps=8", "train.save_every=1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlrl train: stopped at step ") and "lower train.lr (now 1e+10)" in err
    assert "\n" not in err
    for folder in (out / "checkpoints").iterdir():
        tensors = load_file(folder / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in tensors.values()), folder.name


def test_sft_skips_nonfinite_steps_too(tiny_models, tmp_path):
    data = generate_dataset("counting", 24, tmp_path / "data", seed=0)
    cfg = load_config(
        None,
        [
            *COMMON,
            f"model.path={tiny_models['qwen2_vl']}",
            f"data.train={data['train']}",
            "train.steps=5",
            "train.max_nonfinite_skips=2",
            "sft.batch_size=4",
            f"train.output_dir={tmp_path / 'sft'}",
        ],
        schema=SFTConfig,
    )
    trainer = SFTTrainer(cfg)
    before = weights(trainer)
    poison_gradients(trainer, {1, 2})
    with pytest.raises(Diverged, match="stopped at step 2"):
        trainer.train()
    assert all(torch.equal(p, before[n]) for n, p in weights(trainer).items())


def test_weights_holding_nan_are_never_saved(workspace, tmp_path):
    trainer = GRPOTrainer(rl_config(workspace, tmp_path))
    with torch.no_grad():
        next(trainer.model.parameters())[0].fill_(float("nan"))
    with pytest.raises(Diverged, match="refusing to save .*step_000000: the weights hold NaN"):
        trainer.save()
    assert latest_checkpoint(tmp_path) is None


# ---- 2. SIGTERM and Ctrl-C ------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_at_the_step_boundary_and_the_run_resumes(workspace, tmp_path, capsys, signum):
    (tmp_path / "rewards.py").write_text(REWARD_FILE)
    (tmp_path / "signal.txt").write_text(str(int(signum)))
    reward = f"{tmp_path / 'rewards.py'}:signal_at_second_call"
    cfg = config_file(workspace, tmp_path, reward, tmp_path / "out")
    assert main(["train", str(cfg)]) == 128 + signum
    err = capsys.readouterr().err
    assert f"stopped by {signum.name} after step 2; saved {tmp_path / 'out/checkpoints/step_000002'}" in err
    assert f"resume with: vlrl train {cfg} train.resume=auto" in err
    assert "Traceback" not in err
    assert signal.getsignal(signum) is not None  # the handlers were given back
    assert main(["train", str(cfg), "train.resume=auto"]) == 0
    assert f"resumed from step 2 ({tmp_path / 'out/checkpoints/step_000002'})" in capsys.readouterr().out
    assert [r["step"] for r in records(tmp_path / "out" / "metrics.jsonl")] == [1, 2, 3, 4]


# ---- 3. resume checks -----------------------------------------------------------------------


def test_config_differences_skip_what_may_change_and_keys_only_one_side_has():
    saved = {
        "algo": {"kl_beta": 0.0},
        "train": {"lr": 1e-3, "steps": 10, "eval_every": 5},
        "logging": {"jsonl": True},
    }
    current = {
        "algo": {"kl_beta": 0.1, "dual_clip": None},  # a key newer than the checkpoint
        "train": {"lr": 1e-3, "steps": 20, "eval_every": 0},
        "logging": {"jsonl": False},
    }
    assert config_differences(saved, current) == ["algo.kl_beta: 0.0 -> 0.1"]


def test_resume_refuses_another_runs_checkpoint_and_a_new_run_refuses_a_used_folder(workspace, tmp_path):
    GRPOTrainer(rl_config(workspace, tmp_path, "train.steps=1")).train()
    with pytest.raises(
        ValueError, match=r"was saved by a run with other settings \(algo.kl_beta: 0.0 -> 0.5; train.lr"
    ):
        GRPOTrainer(rl_config(workspace, tmp_path, "train.resume=auto", "algo.kl_beta=0.5", "train.lr=1e-3"))
    with pytest.raises(
        ValueError, match="already holds checkpoints of a run .*step_000001.*train.resume=auto"
    ):
        GRPOTrainer(rl_config(workspace, tmp_path, "train.steps=1"))
    # Going further and evaluating or saving on another cadence is the same run.
    resumed = GRPOTrainer(
        rl_config(workspace, tmp_path, "train.resume=auto", "train.steps=2", "train.save_every=2")
    )
    assert resumed.step == 1


# ---- 4. logs of a restart before the first checkpoint ---------------------------------------


def test_a_restart_before_the_first_checkpoint_drops_the_old_records(workspace, tmp_path):
    GRPOTrainer(rl_config(workspace, tmp_path, "train.steps=5")).train(until=2)  # killed, nothing saved
    assert {r["step"] for r in records(tmp_path / ROLLOUTS_FILE)} == {1, 2}
    (tmp_path / ALARMS_FILE).write_text(
        json.dumps({"step": 1, "name": "x", "message": "m", "severity": "warning"}) + "\n"
    )
    GRPOTrainer(rl_config(workspace, tmp_path, "train.steps=5", "train.resume=auto")).train(until=1)
    assert {r["step"] for r in records(tmp_path / ROLLOUTS_FILE)} == {1}
    assert read_alarms(tmp_path / ALARMS_FILE) == []
    assert [r["step"] for r in records(tmp_path / "metrics.jsonl")] == [1]


# ---- 5. dynamic sampling without signal -----------------------------------------------------


def test_dynamic_sampling_without_any_informative_group_skips_the_step(workspace, tmp_path):
    reward = f"reward.functions=['{workspace['reward']}:constant']"
    overrides = [reward, "rollout.dynamic_sampling=true", "rollout.max_resample_rounds=1", "train.steps=3"]
    trainer = GRPOTrainer(rl_config(workspace, tmp_path, *overrides, "monitor.min_steps=2"))
    before = weights(trainer)
    history = trainer.train()
    assert [h["train/skipped_no_signal"] for h in history] == [1, 1, 1]
    assert [h["train/skipped_no_signal_total"] for h in history] == [1, 2, 3]
    assert all(h["frac_zero_std_groups"] == 1.0 and "loss" not in h for h in history)
    assert {(h["dynamic_sampling/kept_groups"], h["dynamic_sampling/dropped_groups"]) for h in history} == {
        (0, 8)
    }
    assert all(torch.equal(p, before[n]) for n, p in weights(trainer).items())
    # Each step drew its own 4 prompts and the extra round's 4, the schedule moved 3 steps: a
    # resumed run continues from the same place.
    sampler = PromptSampler(
        len(trainer.train_samples), trainer.cfg.data.seed, shuffle=trainer.cfg.data.shuffle
    )
    for _ in range(6):
        sampler.next_batch(4)
    assert trainer.sampler.state_dict() == sampler.state_dict()
    assert trainer.scheduler.last_epoch == 3
    assert [a.name for a in read_alarms(tmp_path / ALARMS_FILE)] == ["skipped_steps"]


def test_dynamic_sampling_logs_kept_and_dropped_groups_and_rounds(workspace, tmp_path):
    reward = f"reward.functions=['{workspace['reward']}:odd_answers_only']"
    overrides = [reward, "rollout.dynamic_sampling=true", "rollout.max_resample_rounds=1", "train.steps=4"]
    trainer = GRPOTrainer(rl_config(workspace, tmp_path, *overrides))
    odd = [int(s.answer) % 2 == 1 for s in trainer.train_samples]
    history = trainer.train()
    # The same draws as the trainer: 4 prompts, and 4 more when fewer than 4 had odd answers.
    sampler = PromptSampler(len(odd), trainer.cfg.data.seed, shuffle=trainer.cfg.data.shuffle)
    expected = []
    for _ in history:
        kept = sum(odd[i] for i in sampler.next_batch(4))
        rounds = 1 if kept >= 4 else 2
        if rounds == 2:
            kept += sum(odd[i] for i in sampler.next_batch(4))
        expected.append((min(kept, 4), 4 * rounds - kept, rounds))
    logged = [
        tuple(int(h[f"dynamic_sampling/{k}"]) for k in ("kept_groups", "dropped_groups", "rounds"))
        for h in history
    ]
    assert logged == expected, logged
    assert {d for _, d, _ in logged} != {0}  # the test saw groups dropped
    assert records(tmp_path / "metrics.jsonl")[0]["dynamic_sampling/kept_groups"] == logged[0][0]


# ---- 7. unwritable folders and full disks ---------------------------------------------------


def test_an_output_dir_that_is_a_file_is_one_line(workspace, tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    cfg = config_file(workspace, tmp_path, f"{workspace['reward']}:has_e", tmp_path / "taken")
    assert main(["train", str(cfg)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vlrl train: error: train.output_dir '{tmp_path / 'taken'}' is a file, not a folder: pick a folder path"
    )


def test_a_read_only_output_dir_is_one_line(workspace, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    real = Path.write_text

    def read_only(self, *args, **kwargs):  # the tests run as root, whom chmod does not stop
        if out in self.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    cfg = config_file(workspace, tmp_path, f"{workspace['reward']}:has_e", out)
    assert main(["train", str(cfg)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vlrl train: error: train.output_dir '{out}' is not writable: Permission denied"
    )


def test_a_full_disk_while_saving_keeps_the_last_checkpoint(workspace, tmp_path, capsys, monkeypatch):
    real = torch.save

    def disk_full(obj, path, *args, **kwargs):
        if "step_000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    out = tmp_path / "out"
    cfg = config_file(workspace, tmp_path, f"{workspace['reward']}:has_e", out)
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err
    ckpts = out / "checkpoints"
    assert err.strip() == (
        f"vlrl train: could not write checkpoint {ckpts / 'step_000004'}: No space left on device "
        f"({ckpts / 'step_000004.tmp' / STATE_FILE}); the last complete checkpoint is {ckpts / 'step_000002'} "
        "(free the space, then resume with train.resume=auto)"
    )
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000002"]  # the half-written one is gone
    monkeypatch.setattr(torch, "save", real)
    assert main(["train", str(cfg), "train.resume=auto"]) == 0
    assert f"resumed from step 2 ({tmp_path / 'out/checkpoints/step_000002'})" in capsys.readouterr().out
    assert latest_checkpoint(out).name == "step_000004"
