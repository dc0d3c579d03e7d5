"""Metrics: one JSON line per logged step, optionally TensorBoard and wandb, and a progress line.

Names follow verl: `reward/<name>/mean`, `response_length/mean`, `timing_s/gen`, `timing_s/step`.
`<output_dir>/metrics.jsonl` holds `{"step": s, name: value, ...}` per line, flushed as written
so a killed run keeps what it logged. JSON has no NaN or infinity, so non-finite values are
written as null (None when read back); TensorBoard and wandb receive them unchanged.

Each destination is a sink with the same three methods: `log(step, metrics)`,
`truncate_after(step)` (forget steps after a resumed checkpoint) and `close()`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from pathlib import Path

from vlrl.config import ConfigError

METRICS_FILE = "metrics.jsonl"
# Metric -> short label, in the order the progress line shows them.
PROGRESS_KEYS = {
    "reward/total/mean": "reward",
    "reward/accuracy/mean": "acc",
    "response_length/mean": "len",
    "timing_s/step": "s/step",
}


def finite_or_none(value) -> float | None:
    """`value` as a float, or None when it is NaN or infinite (JSON cannot hold those)."""
    value = float(value)
    return value if math.isfinite(value) else None


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file, in file order.

    A last line without its newline is the write of a killed run and is skipped; a malformed
    complete line is an error naming the file and line.
    """
    *complete, _partial = Path(path).read_text().split("\n")
    records = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON line ({exc})") from exc
    return records


def rewrite_jsonl(path: Path, records: list[dict]) -> None:
    """Replace a JSONL file's contents by `records` (via a renamed temporary file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
    os.replace(tmp, path)


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep only the records of a step-keyed JSONL file with "step" <= `step`: the steps a
    resumed run redoes must not appear twice. A missing file is left missing."""
    if path.is_file():
        rewrite_jsonl(path, [r for r in read_metrics(path) if r["step"] <= step])


class JsonlSink:
    """Appends to metrics.jsonl, one flushed line per `log`."""

    def __init__(self, path: Path):
        self.path = path
        text = path.read_text() if path.is_file() else ""
        if text and not text.endswith("\n"):
            rewrite_jsonl(path, read_metrics(path))  # drop a killed run's partial line before appending
        self._file = path.open("a")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: finite_or_none(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def truncate_after(self, step: int) -> None:
        self._file.close()
        truncate_jsonl(self.path, step)
        self._file = self.path.open("a")

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """Scalars in `<output_dir>/tensorboard`, plus the run config as text."""

    def __init__(self, log_dir: Path, config: dict | None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self._writer = SummaryWriter(str(log_dir))
        if config:
            self._writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, float(value), step)
        self._writer.flush()  # keep the events of a killed run, as for metrics.jsonl

    def truncate_after(self, step: int) -> None:
        # TensorBoard's own mechanism: a writer opened with purge_step hides older events at or
        # after that step, so a resumed run does not draw two curves over the same steps.
        self._writer.close()
        self._writer = type(self._writer)(str(self.log_dir), purge_step=step + 1)

    def close(self) -> None:
        self._writer.close()


# Where a run folder keeps its wandb run id, so that resuming the run continues the wandb run.
WANDB_RUN_ID_FILE = "wandb_run_id.txt"
# logging.wandb_<key> -> the wandb.init argument it sets when not None or empty.
WANDB_OPTIONS = ("entity", "group", "tags", "mode")


def wandb_init_kwargs(project: str, run_dir: Path, config: dict | None) -> dict:
    """wandb.init's arguments for a run logging to `run_dir`.

    The options come from the run config the trainer logs (`logging.wandb_*`). When that config
    resumes (`train.resume` set) and `run_dir` holds the id of an earlier wandb run, the same
    run continues (`id`, `resume="allow"`); otherwise wandb starts a new one.
    """
    options = (config or {}).get("logging", {})
    resume = (config or {}).get("train", {}).get("resume")
    kwargs = {
        "project": project,
        "dir": str(run_dir),
        "name": options.get("wandb_name") or run_dir.name,
        "config": config,
    }
    kwargs |= {key: options[f"wandb_{key}"] for key in WANDB_OPTIONS if options.get(f"wandb_{key}")}
    saved = run_dir / WANDB_RUN_ID_FILE
    if resume is not None and saved.is_file():
        kwargs |= {"id": saved.read_text().strip(), "resume": "allow"}
    return kwargs


class WandbSink:
    """A Weights & Biases run, set up by `wandb_init_kwargs`; its id is saved in the run folder."""

    def __init__(self, project: str, run_dir: Path, config: dict | None):
        import wandb

        self._run = wandb.init(**wandb_init_kwargs(project, run_dir, config))
        (run_dir / WANDB_RUN_ID_FILE).write_text(f"{self._run.id}\n")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log({k: float(v) for k, v in metrics.items()}, step=step)

    def truncate_after(self, step: int) -> None:
        """Nothing to do: wandb keeps a run's steps increasing and ignores, with a warning, the steps
        a resumed run redoes after its checkpoint; resuming redoes them with the same samples and
        losses, so the values wandb kept stand."""

    def close(self) -> None:
        self._run.finish()


def progress_text(metrics: dict[str, float]) -> str:
    """The key numbers of a step, e.g. 'reward 0.531  acc 0.4  len 87.2  s/step 1.23'."""
    return "  ".join(
        f"{label} {float(metrics[key]):.3g}" for key, label in PROGRESS_KEYS.items() if key in metrics
    )


class TqdmProgress:
    """A tqdm bar on stderr, created at the first logged step so a resumed run starts there."""

    def __init__(self, total: int | None, tqdm):
        self.total = total
        self._tqdm = tqdm
        self._bar = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._bar is None:
            # mininterval=0: steps take seconds, and a throttled bar would skip showing some.
            self._bar = self._tqdm(
                total=self.total, initial=step, unit="step", mininterval=0, dynamic_ncols=True
            )
        self._bar.set_postfix_str(progress_text(metrics), refresh=False)
        self._bar.update(step - self._bar.n)

    def truncate_after(self, step: int) -> None:
        """Nothing to do: the bar starts at the first step logged after resuming."""

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class LineProgress:
    """The same information as `TqdmProgress` without tqdm: one rewritten line on a terminal."""

    def __init__(self, total: int | None):
        self.total = total
        self._stream = sys.stderr
        self._wrote = False

    def log(self, step: int, metrics: dict[str, float]) -> None:
        position = f"step {step}" if self.total is None else f"step {step}/{self.total}"
        line = f"{position}  {progress_text(metrics)}".rstrip()
        # On a terminal, return to the line start and clear it; in a log file, one line per step.
        self._stream.write(f"\r{line}\x1b[K" if self._stream.isatty() else line + "\n")
        self._stream.flush()
        self._wrote = True

    def truncate_after(self, step: int) -> None:
        """Nothing to do: the line shows whatever step is logged next."""

    def close(self) -> None:
        if self._wrote and self._stream.isatty():
            self._stream.write("\n")


def progress_display(total: int | None) -> TqdmProgress | LineProgress:
    """A tqdm bar when tqdm is installed, else the plain line."""
    try:
        from tqdm import tqdm
    except ImportError:
        return LineProgress(total)
    return TqdmProgress(total, tqdm)


# Config key of an optional sink -> (the module it imports, the extra that installs it).
EXTRAS = {
    "logging.tensorboard": ("torch.utils.tensorboard", "tensorboard"),
    "logging.wandb": ("wandb", "wandb"),
}


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require_extras(tensorboard: bool, wandb: bool) -> None:
    """A `ConfigError` naming each enabled sink whose package is missing, with the pip command.

    Trainers call it before loading a model, so that a run does not load for minutes and then
    stop at its first log line.
    """
    enabled = {"logging.tensorboard": tensorboard, "logging.wandb": wandb}
    problems = [
        ("", key, f"needs the {extra} package: pip install 'vlrl[{extra}]'")
        for key, (module, extra) in EXTRAS.items()
        if enabled[key] and not _importable(module)
    ]
    if problems:
        raise ConfigError(problems)


class MetricsLogger:
    """Sends each step's metrics to metrics.jsonl, TensorBoard, wandb and the progress display.

    Call `truncate_after(last_done_step)` before the first `log` of a run: the resumed
    checkpoint's step, or 0 for a fresh run in a used output_dir (steps count from 1), so that
    the files hold one record per step. A logger that is not `enabled` (the ranks other than 0
    of a torchrun job) has no sinks and writes nothing.
    """

    def __init__(
        self,
        output_dir: str | Path,
        jsonl: bool = True,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "vlrl",
        config: dict | None = None,
        progress: bool = True,
        total_steps: int | None = None,
        enabled: bool = True,
    ):
        self.output_dir = Path(output_dir)
        self.sinks: list = []
        if not enabled:
            return
        require_extras(tensorboard, wandb)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            if jsonl:
                self.sinks.append(JsonlSink(self.output_dir / METRICS_FILE))
            if tensorboard:
                self.sinks.append(TensorBoardSink(self.output_dir / "tensorboard", config))
            if wandb:
                self.sinks.append(WandbSink(wandb_project, self.output_dir, config))
            if progress:
                self.sinks.append(progress_display(total_steps))
        except BaseException:
            self.close()  # a sink that fails to start must not leave the files opened before it
            raise

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` (name -> number) as of optimizer step `step` everywhere."""
        for sink in self.sinks:
            sink.log(step, metrics)

    def truncate_after(self, step: int) -> None:
        """Forget records of steps after `step` (those a resumed run will redo)."""
        for sink in self.sinks:
            sink.truncate_after(step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
