"""`vlrl eval` and the in-training evaluation on a micro tiny model, on CPU.

A random model answers at random, so accuracy is ~0; these tests check the structure of what
is written and returned, and, honestly constructed, that an answer equal to the truth scores:
the greedy answers of a first run become the ground truth of a second run.
"""

from __future__ import annotations

import json

import pytest

from vlrl.cli import main
from vlrl.data.prompts import get_template
from vlrl.data.sample import Sample
from vlrl.evaluation import evaluate_during_training
from vlrl.models.loading import load_model
from vlrl.rewards import REWARDS
from vlrl.rollout import make_backend

RECORD_KEYS = {
    "id", "question", "answer", "category", "prediction", "extracted", "score", "n_correct", "length",
    "finish_reason",
}  # fmt: skip
SUMMARY_KEYS = {
    "benchmark", "n_questions", "n_scored", "samples_per_question", "temperature", "accuracy", "ci95",
    "answer_rate", "response_length", "truncated", "categories", "by_question_type",
}  # fmt: skip


def mmmu_rows(images) -> list[dict]:
    """Six MMMU-layout questions: open and multiple-choice, with and without images, two subjects."""
    rows = []
    for i in range(6):
        mc = i % 2 == 1
        rows.append(
            {
                "id": f"validation_{'Math' if i < 3 else 'Art'}_{i}",
                "question": f"<image 1> How many shapes are there in picture {i}?"
                if i != 4
                else "What is 2 + 3?",
                "options": "['one', 'two', 'three']" if mc else "[]",
                "answer": "A" if mc else str(i),
                "image_1": str(images["small"]) if i != 4 else None,
                "question_type": "multiple-choice" if mc else "open",
                "subfield": "Counting",
            }
        )
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def eval_args(model, data, out, *extra) -> list[str]:
    return [
        "eval", "--model", str(model), "--data", str(data), "--benchmark", "mmmu", "--max-new-tokens", "8",
        "--batch-size", "4", "--out", str(out), *extra,
    ]  # fmt: skip


def test_vlrl_eval_greedy_writes_predictions_and_summary(tiny_models, images, tmp_path, capsys):
    data = write(tmp_path / "mmmu.jsonl", mmmu_rows(images))
    out, summary_file = tmp_path / "predictions.jsonl", tmp_path / "summary.json"
    assert main(eval_args(tiny_models["qwen2_vl"], data, out, "--summary-out", str(summary_file))) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "95% CI" in printed and "Math" in printed

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == [
        f"validation_{s}_{i}" for i, s in enumerate(["Math"] * 3 + ["Art"] * 3)
    ]
    for r in lines:
        assert set(r) == RECORD_KEYS
        assert len(r["prediction"]) == len(r["extracted"]) == len(r["score"]) == len(r["length"]) == 1
        assert r["score"][0] in (0.0, 1.0) and 1 <= r["length"][0] <= 8
    assert {r["category"] for r in lines} == {"Math", "Art"}  # MMMU's subject, from the id

    summary = json.loads(summary_file.read_text())
    assert SUMMARY_KEYS | {"pass@1"} == set(summary)
    assert (summary["n_questions"], summary["samples_per_question"], summary["temperature"]) == (6, 1, 0.0)
    assert summary["pass@1"] == pytest.approx(summary["accuracy"])
    assert summary["ci95"][0] <= summary["accuracy"] <= summary["ci95"][1]
    assert set(summary["categories"]) == {"Art", "Math"} and summary["categories"]["Art"]["n"] == 3
    assert set(summary["by_question_type"]) == {"multiple-choice", "open"}

    # The greedy extracted answers of the open questions become their ground truth: each must score.
    rows = mmmu_rows(images)
    for row, line in zip(rows, lines, strict=True):
        if row["question_type"] == "open":
            row["answer"] = line["extracted"][0]
    rerun = tmp_path / "rerun.jsonl"
    assert main(eval_args(tiny_models["qwen2_vl"], write(tmp_path / "mmmu2.jsonl", rows), rerun)) == 0
    again = [json.loads(line) for line in rerun.read_text().splitlines()]
    assert [r["prediction"] for r in again] == [r["prediction"] for r in lines]  # greedy is deterministic
    for row, r in zip(rows, again, strict=True):
        if row["question_type"] == "open":
            assert r["score"] == [1.0], r


def test_vlrl_eval_sampled_pass_at_k(tiny_models, images, tmp_path, capsys):
    data = write(tmp_path / "mmmu.jsonl", mmmu_rows(images))
    out, summary_file = tmp_path / "predictions.jsonl", tmp_path / "summary.json"
    args = eval_args(tiny_models["qwen2_vl"], data, out, "--n", "3", "--k", "1,2", "--limit", "4")
    assert main([*args, "--summary-out", str(summary_file)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and all(len(r["prediction"]) == 3 for r in lines)
    summary = json.loads(summary_file.read_text())
    assert (summary["temperature"], summary["samples_per_question"]) == (1.0, 3)
    assert 0.0 <= summary["pass@1"] <= summary["pass@2"] <= 1.0
    assert "pass@2" in capsys.readouterr().out


def test_vlrl_eval_errors_name_the_culprit(tiny_models, images, tmp_path, capsys):
    data = write(tmp_path / "mmmu.jsonl", mmmu_rows(images))
    assert main(eval_args(tiny_models["qwen2_vl"], data, tmp_path / "p.jsonl", "--k", "4")) == 2
    assert "pass@4 needs at least 4 completions per question, but n is 1" in capsys.readouterr().err
    args = eval_args(tiny_models["qwen2_vl"], data, tmp_path / "p.jsonl", "--n", "2", "--temperature", "0")
    assert main(args) == 2
    assert "temperature > 0" in capsys.readouterr().err


def test_evaluate_during_training(tiny_models, images):
    loaded = load_model(tiny_models["qwen2_vl"])
    backend = make_backend("hf", loaded.model, loaded.adapter)
    template = get_template("think_answer")
    samples = [
        Sample("a", "How many circles?", "1", images=[images["small"]]),
        Sample("b", "Which colour?", "B", images=[images["big"]], choices=["red", "blue"]),
        Sample("c", "What is 2 + 3?", "5"),
        Sample("d", "Where is the box?", [100, 50, 200, 120], images=[images["big"]]),  # not scored
    ]
    kwargs = dict(max_new_tokens=6, n=3, k_list=(1, 3), batch_size=4)
    result = evaluate_during_training(backend, loaded.adapter, template, samples, **kwargs)
    assert {"acc", "format", "response_length", "pass@1", "pass@3", "sampled_format", "records"} == set(
        result
    )
    records = result["records"]
    assert [r["id"] for r in records] == ["a", "b", "c", "d"]
    assert records[3]["correct"] is None and records[3]["sampled_correct"] is None
    assert all(len(r["sampled_texts"]) == len(r["sampled_lengths"]) == 3 for r in records)
    # acc is the training accuracy reward on the greedy texts (box sample excluded)
    texts = [r["text"] for r in records]
    reward = REWARDS["accuracy"](
        texts, answer=[s.answer for s in samples], choices=[s.choices for s in samples]
    )
    scored = [x for x in reward if x is not None]
    assert result["acc"] == pytest.approx(sum(scored) / len(scored))
    assert result["format"] == pytest.approx(sum(REWARDS["format"](texts)) / 4)
    drawn = [t for r in records for t in r["sampled_texts"]]
    assert result["sampled_format"] == pytest.approx(sum(REWARDS["format"](drawn)) / 12)
    assert result["response_length"] == pytest.approx(sum(r["length"] for r in records) / 4)
    # the fixed seed makes a second evaluation of the same model identical
    again = evaluate_during_training(backend, loaded.adapter, template, samples, **kwargs)
    assert [r["sampled_texts"] for r in again["records"]] == [r["sampled_texts"] for r in records]
