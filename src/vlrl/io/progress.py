"""Progress on the terminal: a bar for the steps of a training run, and one for items of long commands.

Both write to stderr, so a command's results on stdout stay clean for pipes. With tqdm installed
(it comes with transformers) they are tqdm bars, which give rate and ETA; without it, one line
rewritten in place on a terminal, or one line per update in a log file, with the ETA computed
from the mean rate so far.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

# Metric -> short label, in the order a training run's progress line shows them.
PROGRESS_KEYS = {
    "loss": "loss",
    "reward/total/mean": "reward",
    "reward/accuracy/mean": "acc",
    "response_length/mean": "len",
    "timing_s/step": "s/step",
}


def progress_text(metrics: dict[str, float]) -> str:
    """The key numbers of a step, e.g. 'reward 0.531  acc 0.4  len 87.2  s/step 1.23'.

    >>> progress_text({"loss": 0.25, "timing_s/step": 1.234, "other": 3})
    'loss 0.25  s/step 1.23'
    """
    return "  ".join(
        f"{label} {float(metrics[key]):.3g}"
        for key, label in PROGRESS_KEYS.items()
        if metrics.get(key) is not None
    )


def eta_text(seconds: float) -> str:
    """
    >>> eta_text(42.4), eta_text(125), eta_text(3 * 3600 + 61)
    ('42s', '2m05s', '3h01m')
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Line:
    """The tqdm-less display: one line, rewritten in place on a terminal."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.wrote = False

    def show(self, text: str) -> None:
        on_terminal = self.stream.isatty()
        self.stream.write(f"\r{text}\x1b[K" if on_terminal else text + "\n")
        self.stream.flush()
        self.wrote = True

    def close(self) -> None:
        if self.wrote and self.stream.isatty():
            self.stream.write("\n")


class ProgressBar:
    """Progress over `total` items (questions, images, samples) with rate and ETA.

        with ProgressBar(len(samples), "eval mathvista", unit="question") as bar:
            for chunk in chunks:
                ...
                bar.update(len(chunk))

    `enabled=False` shows nothing (a command run with --no-progress, or a non-zero rank).
    """

    def __init__(
        self,
        total: int,
        description: str,
        unit: str = "item",
        enabled: bool = True,
        stream: TextIO | None = None,
    ):
        self.total, self.description, self.unit = total, description, unit
        self.done = 0
        self._start = time.perf_counter()
        self._bar = self._line = None
        if not enabled:
            return
        stream = stream or sys.stderr
        try:
            from tqdm import tqdm
        except ImportError:
            self._line = _Line(stream)
            return
        self._bar = tqdm(total=total, desc=description, unit=unit, file=stream, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: float) -> None:
        """`n` more items done; `postfix` numbers (e.g. kept=12) are shown beside the bar."""
        self.done += n
        extra = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in postfix.items())
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(extra, refresh=False)
            self._bar.update(n)
        elif self._line is not None:
            elapsed = time.perf_counter() - self._start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = f"  ETA {eta_text((self.total - self.done) / rate)}" if rate > 0 and self.total else ""
            self._line.show(
                f"{self.description}: {self.done}/{self.total} {self.unit}s{eta}  {extra}".rstrip()
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._line is not None:
            self._line.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StepProgress:
    """A training run's progress sink (`log`, `truncate_after`, `close`, as the metrics sinks):
    steps done of `total`, with the key metrics of the last step beside them."""

    def __init__(self, total: int | None, stream: TextIO | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        self._bar = None
        self._line: _Line | None = None
        self._first: tuple[int, float] | None = None
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self._tqdm = tqdm

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._tqdm is not None:
            if self._bar is None:
                # Created at the first logged step, so a resumed run's bar starts there;
                # mininterval=0: steps take seconds, and a throttled bar would skip showing some.
                self._bar = self._tqdm(
                    total=self.total,
                    initial=step,
                    unit="step",
                    mininterval=0,
                    dynamic_ncols=True,
                    file=self.stream,
                )
            self._bar.set_postfix_str(progress_text(metrics), refresh=False)
            self._bar.update(step - self._bar.n)
            return
        now = time.perf_counter()
        if self._first is None:
            self._first = (step, now)
            self._line = _Line(self.stream)
        first_step, t0 = self._first
        eta = ""
        if self.total and step > first_step:
            eta = f"  ETA {eta_text((self.total - step) * (now - t0) / (step - first_step))}"
        position = f"step {step}" if self.total is None else f"step {step}/{self.total}"
        self._line.show(f"{position}{eta}  {progress_text(metrics)}".rstrip())

    def truncate_after(self, step: int) -> None:
        """Nothing to do: the display starts at the first step logged after resuming."""

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._line is not None:
            self._line.close()


def step_progress(total: int | None) -> StepProgress:
    """The progress sink of a training run of `total` steps (None: unknown)."""
    return StepProgress(total)
