"""bench/floor.py on a hand-worked case; bench/gpu_step.py's shapes, its arguments, and its toy runs
(dense, and MoE with two experts kernels) on the CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch
from floor import Device, ModelCounts, StepShape, device_for, floor_seconds
from gpu_step import NEVER_SAMPLED_EOS, SHAPES, image_size, main, model_config, parse_args, with_layers
from transformers import AutoModelForImageTextToText

from vlrl.models.tiny.factory import QWEN_SPECIALS, default_corpus
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


def _parameters(shape, tok) -> dict[str, int]:
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(model_config(shape, tok))
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    return {
        "total": sum(sizes.values()),
        "experts": sum(v for n, v in sizes.items() if ".experts." in n),
        "layers": len(model.model.language_model.layers),
    }


def test_the_moe_shape_is_qwen3_vl_30b_a3b_and_layers_cut_it():
    """Qwen3-VL-30B-A3B-Instruct's safetensors hold 31,070,754,032 parameters; 4 of its 48 layers
    keep the vision tower, embeddings and 4 layers' 128 experts (128 x 3 x 2048 x 768 each)."""
    tok = train_bpe(["a b c"], QWEN_SPECIALS)
    full = _parameters(SHAPES["30b-a3b"], tok)
    assert full["total"] == 31_070_754_032 and full["layers"] == 48
    cut = _parameters(with_layers(SHAPES["30b-a3b"], 4), tok)
    assert cut["layers"] == 4 and cut["experts"] == 4 * 128 * 3 * 2048 * 768
    per_layer = (full["total"] - cut["total"]) / 44
    assert cut["total"] == full["total"] - 44 * per_layer == 3_653_445_872
    assert with_layers(SHAPES["30b-a3b"], None) is SHAPES["30b-a3b"]


@pytest.mark.parametrize(
    ("argv", "kernels"),
    [
        (["--shape", "30b-a3b", "--layers", "4"], ["grouped_mm", "eager"]),  # both kernels by default
        (["--shape", "moe-toy", "--experts-implementation", "eager"], ["eager"]),
        (["--shape", "toy"], None),  # dense: no kernel runs
    ],
)
def test_experts_kernels_default_to_both_for_moe_shapes(argv, kernels):
    assert parse_args(argv).experts_implementation == kernels


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shape", "3b", "--experts-implementation", "eager"], "needs a Mixture-of-Experts shape"),
        (["--shape", "30b-a3b", "--layers", "0"], "--layers must be at least 1"),
        (["--shape", "30b-a3b", "--experts-implementation", "fast"], "invalid choice"),
    ],
)
def test_bad_moe_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


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
    """The dense path: one run, no kernel table."""
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


def test_moe_toy_harness_runs_both_kernels_on_cpu(capsys, tmp_path):
    """Qwen3-VL-MoE at toy size (16 px patches: a 128x128 image for 16 tokens), one run per kernel
    on the same checkpoint; the floor counts the active weights. (The random model's rewards are
    all zero here, so its losses are too: bench/moe_step.py checks that the kernels' losses agree.)"""
    results = main(_toy_argv("--shape", "moe-toy", "--layers", "1", "--experts-implementation", "grouped_mm",
                             "eager", "--json", str(tmp_path / "r.json")))  # fmt: skip
    shape, floor = results["shape"], results["floor"]
    assert (shape.image_tokens, shape.patches) == (16, 64)
    kernels = results["kernels"]
    assert list(kernels) == ["grouped_mm", "eager"] and results["vlrl"] is kernels["grouped_mm"]
    for summary in kernels.values():
        _check_summary(summary, floor)
    out = capsys.readouterr().out
    assert "shape moe-toy, 1 language layers" in out
    assert "vlrl, experts kernel grouped_mm" in out and "vlrl, experts kernel eager" in out
    table = out[out.index("experts kernel      wall s") :].splitlines()
    assert table[1].startswith("grouped_mm") and table[1].endswith("1.00x") and table[2].startswith("eager")
    # N_lm: the language side's weights less the input embedding and the 6 of 8 experts a token
    # skips (one layer of 8 experts of 3 x 128 x 64 weights).
    tok = train_bpe(default_corpus(), QWEN_SPECIALS, vocab_size=2000, eos_token=NEVER_SAMPLED_EOS)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(model_config(with_layers(SHAPES["moe-toy"], 1), tok))
    language = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("model.visual."))
    skipped = 8 * 3 * 128 * 64 * 6 // 8
    assert results["counts"].language == language - model.get_input_embeddings().weight.numel() - skipped
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["counts"]["language"] == results["counts"].language
    assert saved["kernels"]["eager"]["wall_s"] == kernels["eager"]["wall_s"]
    assert saved["args"]["experts_implementation"] == ["grouped_mm", "eager"]
