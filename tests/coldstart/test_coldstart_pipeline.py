"""`vlrl coldstart` end to end against real `vlrl serve` servers, behind a flaky proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlrl.cli import main
from vlrl.coldstart import REASONS, ColdStartConfig, chat, run_coldstart
from vlrl.coldstart.prompts import describe_messages
from vlrl.data import load_samples

FAST = dict(retries=2, backoff=0.01, max_tokens=16, temperature=0.0)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def counts(**nonzero) -> dict:
    return {reason: nonzero.get(reason.replace(" ", "_"), 0) for reason in REASONS}


def descriptions(data_file: Path, vlm_url: str) -> dict[str, str]:
    """What the VLM answers each sample at temperature 0: the description the pipeline must have used."""
    samples, _ = load_samples(data_file)
    return {
        s.id: chat(vlm_url, "qwen2_vl", describe_messages(s), max_tokens=16, temperature=0.0) for s in samples
    }


def test_keeps_right_answers_rejects_the_rest_and_retries_503s(
    data_file, tmp_path, vlm_url, reasoner_url, proxy
):
    # Every request's first attempt gets a 503; the "unlucky" sample's reasoner requests always do.
    flaky = proxy(reasoner_url, lambda body, n: 503 if n == 0 or b"q-unlucky" in body else None)
    out = tmp_path / "out" / "cold.jsonl"
    cfg = ColdStartConfig(vlm_url=vlm_url, reasoner_url=flaky.url + "/v1", concurrency=4, **FAST)

    report = run_coldstart(data_file, out, cfg)

    assert report == {
        "data": str(data_file),
        "out": str(out),
        "total": 4,
        "kept": 2,
        "rejected": counts(wrong_answer=1, request_failed=1),
        "resumed": 0,
    }
    assert json.loads(Path(f"{out}.report.json").read_text()) == report
    # Each sample's first attempt failed and its retry went through; "unlucky" used all 3 attempts.
    for question in ("q-right", "q-choice", "q-wrong"):
        assert flaky.count(question) == 2
    assert flaky.count("q-unlucky") == 3

    described = descriptions(data_file, vlm_url)
    kept = {row["id"]: row for row in read_jsonl(out)}
    assert set(kept) == {"right", "choice"}
    assert kept["right"] == {
        "id": "right",
        "images": ["../data/img/small.png"],  # relative to the output's folder
        "question": "How many shapes? (q-right)",
        "answer": "3",
        "solution": f"<think>{described['right'].strip()} two</think><answer>3</answer>",
    }
    # Multiple choice: "3" names option B by its text; extra columns and task pass through.
    assert kept["choice"]["choices"] == ["2", "3"] and kept["choice"]["answer"] == "B"
    assert kept["choice"]["task"] == "count" and kept["choice"]["source"] == "synthetic"
    assert kept["choice"]["images"] == ["../data/img/big.png"]

    rejected = {row["id"]: row for row in read_jsonl(Path(f"{out}.rejected.jsonl"))}
    assert (
        rejected["wrong"]["reason"] == "wrong answer"
        and "answered '3', truth '4'" in rejected["wrong"]["detail"]
    )
    assert rejected["unlucky"]["reason"] == "request failed"
    assert "after 3 attempts" in rejected["unlucky"]["detail"] and "HTTP 503" in rejected["unlucky"]["detail"]
    # The output is SFT data vlrl loads, images included.
    loaded, _ = load_samples(out)
    assert [s.solution for s in loaded] == [kept[s.id]["solution"] for s in loaded]


def test_rerun_skips_decided_ids_and_retries_failed_requests(
    data_file, tmp_path, vlm_url, reasoner_url, proxy
):
    out = tmp_path / "cold.jsonl"
    earlier = {
        "id": "right",
        "images": [],
        "question": "q",
        "answer": "3",
        "solution": "<think>earlier run</think>",
    }
    # The earlier run was killed while writing the "choice" row: half a line is left.
    out.write_text(json.dumps(earlier) + "\n" + '{"id": "cho')
    Path(f"{out}.rejected.jsonl").write_text(
        json.dumps({"id": "wrong", "reason": "wrong answer", "detail": ""})
        + "\n"
        + json.dumps({"id": "unlucky", "reason": "request failed", "detail": "HTTP 503"})
        + "\n"
    )
    vlm = proxy(vlm_url)
    cfg = ColdStartConfig(vlm_url=vlm.url, reasoner_url=reasoner_url, vlm_model="qwen2_vl", **FAST)

    report = run_coldstart(data_file, out, cfg)

    # Decided ids are not requested again; the failed request is.
    assert [vlm.count(q) for q in ("q-right", "q-wrong", "q-choice", "q-unlucky")] == [0, 0, 1, 1]
    assert report["resumed"] == 2
    assert (report["total"], report["kept"], report["rejected"]) == (4, 3, counts(wrong_answer=1))
    rows = read_jsonl(out)  # every line whole: the cut-off one was removed before appending
    assert rows[0] == earlier and sorted(r["id"] for r in rows) == ["choice", "right", "unlucky"]


def test_a_reasoner_without_answer_tags_is_rejected_for_it(data_file, tmp_path, vlm_url):
    out = tmp_path / "cold.jsonl"
    cfg = ColdStartConfig(vlm_url=vlm_url, reasoner_url=vlm_url, **FAST)  # the random model: no tags
    report = run_coldstart(data_file, out, cfg)
    assert (report["kept"], report["rejected"]) == (0, counts(no_answer_tag=4))
    assert out.read_text() == ""
    details = [row["detail"] for row in read_jsonl(Path(f"{out}.rejected.jsonl"))]
    assert all(d.startswith("response ends with") for d in details)


def test_cli_writes_the_caption_layout_and_prints_the_report(
    data_file, tmp_path, vlm_url, reasoner_url, capsys
):
    out = tmp_path / "cold.jsonl"
    argv = ["coldstart", "--data", str(data_file), "--vlm", vlm_url, "--reasoner", reasoner_url]
    argv += [
        "--out",
        str(out),
        "--template",
        "caption_think_answer",
        "--max-tokens",
        "16",
        "--temperature",
        "0",
    ]
    assert main(argv) == 0
    assert (
        "kept 3 of 4 samples (rejected: 1 wrong answer; 0 decided by earlier runs)" in capsys.readouterr().out
    )
    described = descriptions(data_file, vlm_url)
    for row in read_jsonl(out):
        assert (
            row["solution"]
            == f"<caption>{described[row['id']].strip()}</caption><think>two</think><answer>3</answer>"
        )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--concurrency", "0", "concurrency=0"), ("--retries", "-1", "retries=-1")],
)
def test_cli_rejects_bad_settings_by_name(data_file, tmp_path, capsys, option, value, message):
    argv = [
        "coldstart",
        "--data",
        str(data_file),
        "--vlm",
        "http://127.0.0.1:9",
        "--reasoner",
        "http://127.0.0.1:9",
    ]
    assert main([*argv, "--out", str(tmp_path / "o.jsonl"), option, value]) == 2
    assert message in capsys.readouterr().err
