"""Vision-R1 cold-start data by modality bridging: VLM description -> text reasoner -> answer filter.

For each sample (arXiv 2503.06749, Sec. 3.1):
1. the VLM describes the image(s) for the question (`prompts.DESCRIBE_PROMPT`);
2. a text-only reasoning model solves the question from the description alone
   (`prompts.REASON_PROMPT`), answering `<think>...</think><answer>...</answer>`;
3. its answer is extracted and scored exactly as the accuracy reward scores a rollout
   (`rewards.tags.last_answer`, `rewards.accuracy.accuracy_reward`); only right answers are kept;
4. kept samples are written as SFT rows: the sample's canonical fields plus `solution`, laid out
   for the prompt template the model will be trained with (`SOLUTION_LAYOUTS`).

Requests run on `concurrency` worker threads; answers are judged and written on the calling
thread (where the reward's math time limit works, see `rewards.deadline`), row by row, so that an
interrupted run loses only the samples in flight and a re-run resumes (see `output.Ledger`).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from vlrl.coldstart.client import RequestFailed, chat, list_models
from vlrl.coldstart.output import REQUEST_FAILED, Ledger
from vlrl.coldstart.prompts import describe_messages, reason_messages
from vlrl.data import Sample, load_samples
from vlrl.io import ProgressBar
from vlrl.rewards.accuracy import accuracy_reward
from vlrl.rewards.tags import has_layout, last_answer


class Layout(NamedTuple):
    """How a kept sample's `solution` is written, and the tags the template's format reward checks."""

    text: str
    tags: tuple[str, ...]


# The description is the model's own view of the image: inside <think> for the R1 template, in the
# <caption> section for the caption template (as the synthetic data writes its solutions).
SOLUTION_LAYOUTS: dict[str, Layout] = {
    "think_answer": Layout(
        "<think>{description} {reasoning}</think><answer>{answer}</answer>", ("think", "answer")
    ),
    "caption_think_answer": Layout(
        "<caption>{description}</caption><think>{reasoning}</think><answer>{answer}</answer>",
        ("caption", "think", "answer"),
    ),
}


@dataclass(frozen=True)
class ColdStartConfig:
    """Where the two models are served and how to call them."""

    vlm_url: str
    """Base URL of the OpenAI-compatible VLM server (`vlrl serve`, vLLM, ...), e.g. http://host:8000/v1."""
    reasoner_url: str
    """Base URL of the OpenAI-compatible text reasoning model server."""
    vlm_model: str | None = None
    """Model id sent to the VLM server; None takes the first one it lists at /v1/models."""
    reasoner_model: str | None = None
    """Model id sent to the reasoner server; None takes the first one it lists."""
    template: str = "think_answer"
    """Prompt template the SFT rows are for: a key of `SOLUTION_LAYOUTS`."""
    concurrency: int = 4
    """Samples in flight at once."""
    retries: int = 3
    """Retries of a request after a connection error, timeout, HTTP 429 or 5xx."""
    timeout: float = 60.0
    """Seconds per request attempt."""
    backoff: float = 1.0
    """First retry delay in seconds; doubles with each retry (see `vlrl.net.http.backoff_delay`)."""
    max_tokens: int = 4096
    """Completion limit of each request (descriptions and reasoning alike)."""
    temperature: float = 0.6
    """Sampling temperature of both models (0.6 is DeepSeek-R1's recommended setting)."""

    def __post_init__(self):
        if self.template not in SOLUTION_LAYOUTS:
            raise ValueError(f"unknown template {self.template!r}; valid: {', '.join(SOLUTION_LAYOUTS)}")
        checks = {
            "concurrency": self.concurrency >= 1,
            "retries": self.retries >= 0,
            "timeout": self.timeout > 0,
            "max_tokens": self.max_tokens >= 1,
            "temperature": self.temperature >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"coldstart {name}={getattr(self, name)!r} is out of range")


@dataclass(frozen=True)
class Verdict:
    """The judgement of one sample's bridging: `reason` None keeps it, with its SFT `solution`."""

    reason: str | None
    detail: str = ""
    solution: str = ""


def run_coldstart(
    data: str | os.PathLike, out: str | os.PathLike, cfg: ColdStartConfig, progress: bool = False
) -> dict:
    """Bridge every sample of `data` not yet decided in `out`; returns the report (also written to disk).

    `progress`: a bar with ETA and the kept count on stderr.
    """
    samples, _ = load_samples(data)
    ledger = Ledger(out)
    todo = [s for s in samples if not ledger.decided(s.id)]
    models = (
        cfg.vlm_model or _first_model(cfg.vlm_url, cfg, "--vlm-model"),
        cfg.reasoner_model or _first_model(cfg.reasoner_url, cfg, "--reasoner-model"),
    )
    out_dir = Path(out).resolve().parent
    pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="coldstart")
    try:
        with ledger, ProgressBar(len(todo), "coldstart", unit="sample", enabled=progress) as bar:
            futures: dict[Future, Sample] = {pool.submit(bridge, s, cfg, *models): s for s in todo}
            for future in as_completed(futures):
                _record(ledger, futures[future], future, cfg.template, out_dir)
                bar.update(kept=len(ledger.kept))
    finally:
        pool.shutdown(cancel_futures=True)  # on an interrupt, start nothing new
    report = {
        "data": str(data),
        "out": str(out),
        **ledger.report([s.id for s in samples], len(samples) - len(todo)),
    }
    ledger.report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def bridge(sample: Sample, cfg: ColdStartConfig, vlm_model: str, reasoner_model: str) -> tuple[str, str]:
    """(image description, reasoner response) for one sample: the two requests of modality bridging."""
    params = dict(
        timeout=cfg.timeout,
        retries=cfg.retries,
        backoff=cfg.backoff,
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
    )
    description = chat(cfg.vlm_url, vlm_model, describe_messages(sample), **params)
    response = chat(cfg.reasoner_url, reasoner_model, reason_messages(sample, description), **params)
    return description, response


def judge(sample: Sample, description: str, response: str, template: str) -> Verdict:
    """Keep the sample iff the response's last `<answer>` is right, scored by the accuracy reward itself.

    A kept sample's solution must also pass the template's format check (`has_layout`, as the
    format reward applies it): a tag inside the description or reasoning would teach a layout
    that RL then penalises.
    """
    answer = last_answer(response)
    if answer is None or not answer.strip():
        return Verdict("no answer tag", f"response ends with {response[-200:]!r}")
    score = accuracy_reward([response], answer=[sample.answer], choices=[sample.choices])[0]
    if score is None:
        return Verdict("unverifiable truth", f"truth {sample.answer!r} is not a text answer (boxes?)")
    if score == 0.0:
        return Verdict("wrong answer", f"answered {answer.strip()!r}, truth {sample.answer!r}")
    solution = solution_text(template, description, reasoning_text(response), answer.strip())
    if not has_layout(solution, SOLUTION_LAYOUTS[template].tags):
        return Verdict("bad format", f"solution breaks the {template} layout: {solution[:200]!r}")
    return Verdict(None, solution=solution)


def reasoning_text(response: str) -> str:
    """The reasoning of a response: inside `<think>...</think>`, or everything before `<answer>`.

    R1-style models often omit the opening `<think>` (their chat template adds it), so the text
    up to the first `</think>` counts.
    """
    end = response.find("</think>")
    if end < 0:
        end = response.rfind("<answer>")
    return response[:end].replace("<think>", "", 1).strip()


def solution_text(template: str, description: str, reasoning: str, answer: str) -> str:
    """The SFT target in `template`'s layout."""
    return SOLUTION_LAYOUTS[template].text.format(
        description=description.strip(), reasoning=reasoning, answer=answer
    )


def sft_row(sample: Sample, solution: str, out_dir: Path) -> dict:
    """The sample's canonical fields, extra columns and `solution`; image paths relative to `out_dir`."""
    row: dict = {
        "id": sample.id,
        "images": [os.path.relpath(p, out_dir) for p in sample.images],
        "question": sample.question,
        "answer": sample.answer,
    }
    row |= {
        key: value for key, value in (("choices", sample.choices), ("task", sample.task)) if value is not None
    }
    return {**row, **sample.extra, "solution": solution}


def _record(ledger: Ledger, sample: Sample, future: Future, template: str, out_dir: Path) -> None:
    """Judge one finished sample and append it to the kept or the rejected file."""
    try:
        description, response = future.result()
    except RequestFailed as exc:
        ledger.reject(sample.id, REQUEST_FAILED, str(exc))
        return
    verdict = judge(sample, description, response, template)
    if verdict.reason is None:
        ledger.keep(sft_row(sample, verdict.solution, out_dir))
    else:
        ledger.reject(sample.id, verdict.reason, verdict.detail)


def _first_model(url: str, cfg: ColdStartConfig, option: str) -> str:
    """The first model a server lists, for when its name was not given."""
    try:
        names = list_models(url, cfg.timeout, cfg.retries, cfg.backoff)
    except RequestFailed as exc:
        raise ValueError(f"cannot ask {url} which model it serves ({exc}); give {option}") from None
    if not names:
        raise ValueError(f"{url} lists no models; give {option}")
    return names[0]
