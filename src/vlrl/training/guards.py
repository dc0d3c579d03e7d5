"""What ends a run before its last step, and how it tells the user.

- A step whose loss or gradient is NaN or infinite is not applied (`train.max_nonfinite_skips`
  of them in a row stop the run: `Diverged`); weights holding NaN are never saved.
- SIGTERM (Slurm preemption) or Ctrl-C: the run finishes the step under way, saves, and stops
  with `Interrupted`; a second Ctrl-C stops at once, as without the handler.
- A checkpoint that cannot be written (disk full, read-only folder) stops with `SaveFailed`,
  the earlier checkpoints untouched.

Each is a `RunStopped` whose message is the one line the CLI prints, and whose `exit_code` it
returns, instead of a traceback.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch


class RunStopped(Exception):
    """A run ended early on purpose; `str(exc)` says why and what to do next."""

    exit_code = 1


class Diverged(RunStopped):
    """Non-finite losses or gradients several steps running, or non-finite weights at a save."""


class SaveFailed(RunStopped):
    """A checkpoint could not be written."""


class Interrupted(RunStopped):
    """SIGTERM or SIGINT arrived; the checkpoint of the last finished step is saved."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for a process ended by a signal


class StopSignals:
    """While entered, SIGTERM and SIGINT set `received` (the signal number) instead of killing.

    The handler then restores the previous one, so a second signal acts as it would have without
    this (Ctrl-C twice: KeyboardInterrupt at once). Python lets only the main thread install
    handlers; elsewhere (a run started from a worker thread) nothing is caught.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum
        signal.signal(signum, self._restorable(signum))

    def _restorable(self, signum: int):
        # None: a handler installed from C, which Python cannot reinstall; the default is closest.
        previous = self._previous[signum]
        return signal.SIG_DFL if previous is None else previous

    def __exit__(self, *exc) -> None:
        for signum in self._previous:
            signal.signal(signum, self._restorable(signum))
        self._previous = {}


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter of `model` (this rank's shards, under FSDP2) is finite."""
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        if not bool(torch.isfinite(local).all()):
            return False
    return True


def check_output_dir(out: Path, rank: int = 0) -> None:
    """Create `out` and write a probe file there, so that a run that cannot write its logs and
    checkpoints fails before loading anything, with a ValueError naming the folder and the cause."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"train.output_dir '{out}' is a file, not a folder: pick a folder path")
    probe = out / f".write_test_rank{rank}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"train.output_dir '{out}' is not writable: {exc.strerror or exc}") from exc
