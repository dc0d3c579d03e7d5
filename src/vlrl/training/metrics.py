"""Metrics: one JSON line per logged step, optionally TensorBoard and wandb, and a progress display.

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
from pathlib import Path

from vlrl.config import ConfigError
from vlrl.io import METRICS_FILE, JsonlAppender, step_progress, truncate_jsonl


def finite_or_none(value) -> float | None:
    """`value` as a float, or None when it is NaN or infinite (JSON cannot hold those)."""
    value = float(value)
    return value if math.isfinite(value) else None


class JsonlSink:
    """Appends to metrics.jsonl, one flushed line per `log`."""

    def __init__(self, path: Path):
        self.path = path
        self._file = JsonlAppender(path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._file.write({"step": step, **{k: finite_or_none(v) for k, v in metrics.items()}})

    def truncate_after(self, step: int) -> None:
        self._file.close()
        truncate_jsonl(self.path, step)
        self._file = JsonlAppender(self.path)

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
                self.sinks.append(step_progress(total_steps))
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
