"""Tiny-model training on CUDA: bf16 weights and autocast, LoRA, gradient checkpointing, FSDP2
over NCCL, and the shared-prefix scoring path in bf16."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlrl.config import SFTConfig, TrainConfig, load_config
from vlrl.data.prompts import TEMPLATES
from vlrl.data.sample import Sample
from vlrl.models.loading import load_model
from vlrl.models.logprobs import grouped_response_logprobs, response_logprobs
from vlrl.synth import generate_dataset
from vlrl.training.grpo import GRPOTrainer
from vlrl.training.sft import SFTTrainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (none is visible to torch)"
    ),
]
ROOT = Path(__file__).resolve().parents[2]
REWARD_FILE = (
    'def has_e(completions, **fields):\n    return [1.0 if "e" in c else 0.0 for c in completions]\n'
)
PRECISIONS = {"bf16 weights": ["model.dtype=bfloat16"], "fp32 + autocast": ["train.autocast=bfloat16"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_data")
    (root / "rewards.py").write_text(REWARD_FILE)
    return generate_dataset("counting", 24, root / "synth", seed=0, heldout=0) | {
        "reward": root / "rewards.py"
    }


def common(model: Path, data: dict, out: Path, steps: int) -> list[str]:
    return [
        f"model.path={model}",
        f"data.train={data['train']}",
        "data.system_prompt=Answer.",
        f"train.steps={steps}",
        "train.lr=1e-3",
        "train.lr_schedule=constant",
        "train.device=cuda",
        "logging.progress=false",
        f"train.output_dir={out}",
    ]


def grpo_args(model: Path, data: dict, out: Path, steps: int = 2) -> list[str]:
    return [
        *common(model, data, out, steps),
        "data.template=answer_only",
        f"reward.functions=['{data['reward']}:has_e']",
        "rollout.group_size=4",
        "rollout.prompts_per_step=4",
        "rollout.max_new_tokens=12",
    ]


def sft_args(model: Path, data: dict, out: Path, steps: int = 2) -> list[str]:
    return [*common(model, data, out, steps), "sft.batch_size=8", "train.warmup_steps=0"]


def assert_trained(history: list[dict], trainer) -> None:
    assert history and all(math.isfinite(h["loss"]) and math.isfinite(h["grad_norm"]) for h in history)
    assert next(trainer.model.parameters()).device.type == "cuda"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_sft_then_grpo_train_on_cuda(cuda_model, data, tmp_path, precision):
    start = cuda_model("qwen2_vl")
    weights = torch.bfloat16 if precision == "bf16 weights" else torch.float32
    sft = SFTTrainer(
        load_config(
            None, [*sft_args(start, data, tmp_path / "sft"), *PRECISIONS[precision]], schema=SFTConfig
        )
    )
    before = {n: p.detach().clone() for n, p in sft.model.named_parameters()}
    assert_trained(sft.train(), sft)
    assert all(p.dtype == weights for p in sft.model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in sft.model.named_parameters())
    cold = tmp_path / "sft" / "checkpoints" / "step_000002"
    grpo = GRPOTrainer(
        load_config(
            None, [*grpo_args(cold, data, tmp_path / "rl"), *PRECISIONS[precision]], schema=TrainConfig
        )
    )
    assert_trained(grpo.train(), grpo)


def test_lora_grpo_on_cuda_trains_only_the_adapters(cuda_model, data, tmp_path):
    lora = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.dropout=0", "model.dtype=bfloat16"]
    trainer = GRPOTrainer(
        load_config(None, [*grpo_args(cuda_model("qwen2_vl"), data, tmp_path), *lora], schema=TrainConfig)
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    history = trainer.train()
    assert_trained(history, trainer)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)


def test_gradient_checkpointing_gives_the_same_losses(cuda_model, data, tmp_path):
    """SFT (no sampling: the same batches either way) in float32, two steps: checkpointing only
    recomputes activations, so losses and gradient norms agree to float32 rounding of the
    recomputation order (1e-4 relative)."""
    runs = {}
    for ckpt in (False, True):
        args = [
            *sft_args(cuda_model("qwen2_vl"), data, tmp_path / str(ckpt)),
            f"model.gradient_checkpointing={str(ckpt).lower()}",
        ]
        runs[ckpt] = SFTTrainer(load_config(None, args, schema=SFTConfig)).train()
    for off, on in zip(runs[False], runs[True], strict=True):
        assert on["loss"] == pytest.approx(off["loss"], rel=1e-4)
        assert on["grad_norm"] == pytest.approx(off["grad_norm"], rel=1e-4)


def test_shared_prefix_and_padded_logprobs_agree_in_bf16(cuda_model, images):
    """The two scoring paths compute the same function with different kernels (cached vs full
    attention, left vs right padding), so in bf16 they differ by its rounding: logits carry 8
    significant bits (relative error 2^-8 = 0.4%); on log-probs of magnitude ~ln V < 10 that is
    < 0.04 absolute, asserted with rtol 1.6e-2 (torch's bf16 default) and atol 4e-2."""
    lm = load_model(cuda_model("qwen2_5_vl"))
    model, a = lm.model.to("cuda", torch.bfloat16), lm.adapter
    samples = [
        Sample(id="a", question="How many?", answer="1", images=[images["small"]]),
        Sample(id="b", question="Which has more? <image>", answer="1", images=[images["big"]]),
    ]
    prompts = [a.encode(s, TEMPLATES["answer_only"]) for s in samples]
    row_prompt, responses = [0, 1, 0, 1], [torch.arange(5, 5 + n) for n in (4, 3, 2, 4)]
    blocked = torch.tensor(a.blocked_token_ids(model.get_input_embeddings().num_embeddings))
    pad, lengths = a.tokenizer.pad_token_id, [r.numel() for r in responses]
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        grouped, _ = grouped_response_logprobs(model, a, prompts, row_prompt, responses, pad, 0.7, blocked)
        seqs = [prompts[p].with_response(r) for p, r in zip(row_prompt, responses, strict=True)]
        padded, _ = response_logprobs(model, seqs, lengths, pad, 0.7, blocked)
    torch.testing.assert_close(grouped.cpu() * mask, padded.cpu() * mask, rtol=1.6e-2, atol=4e-2)


def test_fsdp2_over_nccl_in_one_process(cuda_model, data, tmp_path):
    """torchrun with one process: the process group (NCCL), FSDP2 sharding with bf16 compute and
    float32 reduction, the sharded checkpoint — the world-size-1 case of a multi-GPU run."""
    out = tmp_path / "fsdp"
    args = [
        *grpo_args(cuda_model("qwen2_vl"), data, out),
        "distributed.backend=nccl",
        "distributed.param_dtype=bfloat16",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "vlrl",
        "train",
        *args,
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and all(math.isfinite(s["loss"]) for s in steps)
    assert (out / "checkpoints" / "step_000002" / "sharded").is_dir()
