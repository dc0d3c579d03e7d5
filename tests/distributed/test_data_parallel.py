"""torchrun + FSDP2 on CPU (gloo): a 2-process run is the 1-process run, for RL and SFT.

Tolerance: both runs sample the same completions (per-prompt counter-based draws) and score
them identically, so rewards are compared exactly. Losses and gradient norms are sums of the
same terms taken in another order (other micro-batches, a reduce-scatter across ranks), i.e.
float32 rounding of about 1e-7 relative per operation; over a few Adam steps we measured
differences below 1e-6 relative, and assert 1e-4 relative (1e-6 absolute near zero).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vlrl.distributed import shard_range
from vlrl.synth import generate_dataset
from vlrl.training.checkpoint import load_trainer_state

REWARD_FILE = (
    'def has_e(completions, **fields):\n    return [1.0 if "e" in c else 0.0 for c in completions]\n'
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
RTOL, ATOL = 1e-4, 1e-6
ROOT = Path(__file__).resolve().parents[2]


def launch(args: list[str], nproc: int | None) -> list[str]:
    """`python -m vlrl ...` in one plain process, or under torchrun with `nproc` processes."""
    if nproc is None:
        return [sys.executable, "-m", "vlrl", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "vlrl",
        *args,
    ]


def run(args: list[str], nproc: int | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(launch(args, nproc), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_steps(a: list[dict], b: list[dict], exact: tuple[str, ...], close: tuple[str, ...]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for key in (k for k in exact if k in ra):
            assert ra[key] == rb[key], (ra["step"], key)
        for key in close:
            assert rb[key] == pytest.approx(ra[key], rel=RTOL, abs=ATOL), (ra["step"], key)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("dp")
    data = generate_dataset("counting", 40, root / "data", seed=0, heldout=8)
    (root / "rewards.py").write_text(REWARD_FILE)
    return {"root": root, "model": tiny_models["qwen2_vl"], "data": data, "reward": root / "rewards.py"}


def rl_args(ws, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "configs/grpo_tiny.yaml",
        f"model.path={ws['model']}",
        f"data.train={ws['data']['train']}",
        f"data.eval={{heldout: {ws['data']['heldout']}}}",
        "data.template=answer_only",
        "data.system_prompt=Answer.",
        f"reward.functions=['{ws['reward']}:has_e']",
        "rollout.group_size=4",
        "rollout.prompts_per_step=6",  # 3 prompts a rank
        "rollout.max_new_tokens=12",
        "train.steps=4",
        "train.save_every=2",
        "train.eval_every=2",
        "train.lr=3e-3",
        "train.lr_schedule=constant",
        "algo.kl_beta=0.05",  # a reference model, sharded like the policy (with LoRA: adapters off)
        "train.micro_batch_tokens=300",  # several micro-batches, different counts per rank
        "train.device=cpu",
        "logging.progress=false",
        f"train.output_dir={out}",
        *extra,
    ]


RL_EXACT = (
    "reward/total/mean",
    "response_length/mean",
    "eval/heldout/acc",
    "eval/heldout/response_length/mean",
)
RL_CLOSE = ("loss", "grad_norm", "entropy", "kl")


@pytest.fixture(scope="module")
def rl_runs(ws):
    one, two = ws["root"] / "rl_one", ws["root"] / "rl_two"
    run(rl_args(ws, one))
    run(rl_args(ws, two), nproc=2)
    return one, two


def test_shard_range_splits_contiguously_and_evenly():
    for n in range(0, 12):
        for size in (1, 2, 3, 5):
            parts = [shard_range(n, size, r) for r in range(size)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_rl_two_processes_match_one(rl_runs):
    one, two = rl_runs
    a, b = metrics(one), metrics(two)
    assert len(a) == 4 and "eval/heldout/acc" in a[1]
    assert_same_steps(a, b, RL_EXACT, RL_CLOSE)
    assert any(r["loss"] != 0 for r in a)  # something was learned from, not a zero-signal run
    # One writer: rank 0's files only, the same records as one process.
    rollouts = [json.loads(x)["sample_id"] for x in (two / "rollouts.jsonl").read_text().splitlines()]
    assert rollouts == [json.loads(x)["sample_id"] for x in (one / "rollouts.jsonl").read_text().splitlines()]


def test_lora_under_fsdp2_matches_one_process(ws):
    # LoRA dropout draws from each process's generator, which a split batch consumes differently.
    extra = (
        "model.lora.enabled=true",
        "model.lora.r=4",
        "model.lora.dropout=0",
        "train.steps=3",
        "train.eval_every=0",
    )
    one, two = ws["root"] / "lora_one", ws["root"] / "lora_two"
    run(rl_args(ws, one, *extra))
    run(rl_args(ws, two, *extra), nproc=2)
    assert_same_steps(metrics(one), metrics(two), ("reward/total/mean",), RL_CLOSE)
    assert (two / "checkpoints" / "step_000003" / "adapter_model.safetensors").is_file()


def test_sft_two_processes_match_one(ws):
    args = lambda out: [  # noqa: E731
        "sft",
        "configs/sft_tiny.yaml",
        f"model.path={ws['model']}",
        f"data.train={ws['data']['train']}",
        f"data.eval={{heldout: {ws['data']['heldout']}}}",
        "data.system_prompt=Answer.",
        "sft.batch_size=7",  # 4 + 3 samples
        "sft.eval_max_new_tokens=12",
        "train.eval_every=2",
        "train.steps=4",
        "train.warmup_steps=0",
        "train.lr=1e-3",
        "train.micro_batch_tokens=300",
        "train.device=cpu",
        "logging.progress=false",
        f"train.output_dir={out}",
    ]
    one, two = ws["root"] / "sft_one", ws["root"] / "sft_two"
    run(args(one))
    run(args(two), nproc=2)
    a, b = metrics(one), metrics(two)
    assert "eval/heldout/acc" in a[1]
    assert_same_steps(
        a, b, ("response_length/mean", "eval/heldout/response_length/mean"), ("loss", "grad_norm")
    )
    assert a[-1]["loss"] < a[0]["loss"]


def test_killed_two_process_run_resumes_to_the_same_steps(ws, rl_runs):
    _, reference = rl_runs
    out = ws["root"] / "rl_killed"
    args = rl_args(ws, out, "train.steps=4")
    proc = subprocess.Popen(
        launch(args, 2),
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint = out / "checkpoints" / "step_000002" / "trainer_state.pt"
    deadline = time.time() + 300
    while not checkpoint.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, mid-run
    proc.wait()
    assert checkpoint.is_file()
    assert not (out / "checkpoints" / "step_000004").exists(), "the run finished before it could be killed"
    run([*args, "train.resume=auto"], nproc=2)
    assert_same_steps(metrics(reference), metrics(out), RL_EXACT, RL_CLOSE)


def test_consolidated_export_loads_in_transformers_and_generates(rl_runs, ws):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _, two = rl_runs
    folder = two / "checkpoints" / "step_000004"
    assert (folder / "sharded").is_dir() and (folder / "model.safetensors").is_file()
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    row = json.loads(ws["data"]["heldout"].read_text().splitlines()[0])
    from PIL import Image

    image = Image.open(ws["data"]["heldout"].parent / row["images"][0])
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}],
        add_generation_prompt=True,
    )
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    # The export is the trained policy: its weights differ from the starting model's.
    start = AutoModelForImageTextToText.from_pretrained(ws["model"])
    name = "lm_head.weight"
    assert not torch.equal(model.state_dict()[name], start.state_dict()[name])


def test_sharded_checkpoint_refuses_another_world_size(rl_runs):
    _, two = rl_runs
    folder = two / "checkpoints" / "step_000002"
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    with pytest.raises(ValueError, match="nproc_per_node 2"):
        load_trainer_state(folder, opt, sched)
    with pytest.raises(ValueError, match="saved by 2 processes and this job has 4"):
        load_trainer_state(folder, opt, sched, rank=0, world_size=4)


HANG = """
import sys, time, torch
from vlrl.distributed import CollectiveTimeout, all_reduce_sums, init_world
world = init_world(torch.device("cpu"), timeout_s=3)
if world.rank == 1:
    time.sleep(120)  # hangs: never joins the collective
try:
    all_reduce_sums({"loss": 1.0}, "loss metrics")
except CollectiveTimeout as exc:
    print(exc, flush=True)
    sys.exit(7)
"""


def test_a_hung_rank_ends_the_job_with_a_clear_message(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    start = time.time()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert time.time() - start < 100  # ended by the timeout, not by the hung rank's sleep
    assert proc.returncode != 0
    assert "rank 0: collective 'loss metrics' failed" in proc.stdout
    assert "train.resume=auto" in proc.stdout
