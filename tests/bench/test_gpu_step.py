"""bench/floor.py on a hand-worked case; bench/gpu_step.py's shapes and its toy run on the CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch
from floor import Device, ModelCounts, StepShape, device_for, floor_seconds
from gpu_step import SHAPES, image_size, main, model_config
from transformers import AutoModelForImageTextToText

from vlrl.models.tiny.factory import QWEN_SPECIALS
from vlrl.models.tiny.tokenizer import train_bpe


def test_floor_hand_computed():
    """N_lm 1e9, N_vis 1e8 (Q 256 patches), N_conn 1e7 (I 64 image tokens); P 2 x G 4 = B 8 rows,
    L_p 100, R 10, one update, one extra forward; 1 PFLOP/s and 1 TB/s.

    F(L) = 2 (1e9 L + 1e8 * 256 + 1e7 * 64) = 2 (1e9 L + 2.624e10)
    S = P F(100) + B * 2 * 1e9 * R = 2 * 2 * 1.2624e11 + 8 * 2e9 * 10 = 5.0496e11 + 1.6e11 = 6.6496e11
      prefill  P F(100)  = 5.0496e11 FLOPs    -> 0.50496 ms
      train    3 S       = 1.99488e12         -> 1.99488 ms
      extra    S         = 6.6496e11          -> 0.66496 ms
      decode   R W + B kv (R L_p + R (R-1) / 2)
               = 10 * 2e9 + 8 * 1000 * (1000 + 45) = 2e10 + 8.36e6 = 2.000836e10 B -> 20.00836 ms
      total    23.17316 ms
    """
    counts = ModelCounts(
        language=10**9, vision=10**8, connector=10**7, weight_bytes=2 * 10**9, kv_bytes_per_token=1000
    )
    shape = StepShape(
        prompts=2,
        group=4,
        prompt_tokens=100,
        image_tokens=64,
        patches=256,
        response_tokens=10,
        extra_forwards=1,
    )
    floor = floor_seconds(counts, shape, Device("test", 1e15, 1e12))
    expected = {"prefill": 5.0496e-4, "train": 1.99488e-3, "extra": 6.6496e-4, "decode": 2.000836e-2}
    for phase, seconds in expected.items():
        assert floor[phase] == pytest.approx(seconds, rel=1e-12), phase
    assert floor["total"] == pytest.approx(2.317316e-2, rel=1e-12)


def test_device_table_matches_cuda_names():
    assert device_for("NVIDIA H100 80GB HBM3").hbm_bytes_per_s == 3.35e12
    assert device_for("NVIDIA H200").hbm_bytes_per_s == 4.8e12
    assert device_for("NVIDIA A100-SXM4-80GB").peak_flops == 312e12
    assert device_for("Tesla T4") is None


@pytest.mark.parametrize("tokens", [16, 600, 7])
def test_image_size_gives_exactly_the_tokens(tokens):
    width, height = image_size(tokens)
    assert width % 28 == height % 28 == 0
    assert (width // 28) * (height // 28) == tokens


@pytest.mark.parametrize(("name", "params"), [("3b", 3.75e9), ("7b", 8.29e9)])
def test_real_shapes_have_the_published_sizes(name, params):
    """Qwen2.5-VL-3B/7B-Instruct list 3.75B and 8.29B parameters; built on the meta device, no memory."""
    tok = train_bpe(["a b c"], QWEN_SPECIALS)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(model_config(SHAPES[name], tok))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=2e-3)


def _toy_argv(*extra: str) -> list[str]:
    return ["--shape", "toy", "--device", "cpu", "--steps", "2", "--prompts", "2", "--group", "4",
            "--response-tokens", "12", "--image-tokens", "16", *extra]  # fmt: skip


def _check_summary(summary: dict, floor: dict) -> None:
    assert summary["response_length"] == 12  # the EOS is never sampled: every row runs to the limit
    for key in ("wall_s", "tokens_per_s", "response_tokens_per_s", "samples_per_s"):
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    # The floor assumes H100 numbers on a CPU: no CPU step comes near it.
    assert summary["floor_multiple"] > 1
    assert summary["floor_s"] == floor["total"]


def test_toy_harness_runs_on_cpu(capsys, tmp_path):
    results = main(_toy_argv("--ppo-epochs", "2", "--json", str(tmp_path / "r.json")))
    shape, floor = results["shape"], results["floor"]
    assert (shape.image_tokens, shape.patches) == (16, 64)  # a 112x112 image: 8x8 patches, 2x2 merged
    assert (shape.updates, shape.extra_forwards) == (2, 1)  # ppo_epochs 2: old log-probs pass
    assert all(v > 0 for v in floor.values())
    vlrl = results["vlrl"]
    _check_summary(vlrl, floor)
    assert vlrl["timing_s/old_ref"] > 0 and vlrl["timing_s/update"] > 0 and vlrl["timing_s/gen"] > 0
    assert vlrl["timing_s/step"] <= vlrl["wall_s"]
    out = capsys.readouterr().out
    assert "ASSUMED H100 SXM" in out and "step / floor" in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["vlrl"]["wall_s"] == vlrl["wall_s"] and saved["shape"]["updates"] == 2
    assert saved["vlrl"]["peak_memory"]["measured"].startswith("CPU peak RSS")


def test_toy_harness_runs_trl_alike():
    pytest.importorskip("trl")
    results = main(_toy_argv("--trl"))
    _check_summary(results["trl"], results["floor"])
