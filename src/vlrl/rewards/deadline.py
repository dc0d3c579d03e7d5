"""Wall-clock limits for reward code, which runs on untrusted model text.

Python can only interrupt running code with a signal, and signals reach only the main thread. So on
the main thread a limit is a SIGALRM timer (`signal.setitimer`, sub-second, and nestable: an inner
limit saves the outer timer and re-arms it with the time that is left). Off the main thread nothing
can be interrupted: `deadline` is then a no-op and the callers' cheap pre-checks are the only guard,
while `call_with_deadline` stops *waiting* for the call (the work itself goes on in an abandoned
daemon thread).

math-verify has its own `signal.alarm` timeouts, but they take whole seconds, raise off the main
thread, and cancel any outer timer; we switch them off and use these instead.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class RewardTimeout(BaseException):
    """A reward ran past its time limit.

    A BaseException, like KeyboardInterrupt, so that the `except Exception` blocks inside
    math-verify and sympy cannot swallow it and carry on with the limit already spent.
    """


def _raise_timeout(signum, frame):
    raise RewardTimeout("time limit reached")


def can_interrupt() -> bool:
    """Whether a running computation can be stopped here (main thread on a POSIX system)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise `RewardTimeout` inside the block once `seconds` have passed (main thread only).

    >>> with deadline(1.0):
    ...     sum(range(10))
    45
    """
    if not seconds or seconds <= 0 or not can_interrupt():
        yield
        return
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    outer_handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer_left) if outer_left else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if outer_handler is not None:
            signal.signal(signal.SIGALRM, outer_handler)
        if outer_left:
            # An outer limit that fell due while we ran must still fire: re-arm it at once.
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-6))


def call_with_deadline(fn: Callable[[], T], seconds: float | None) -> T:
    """`fn()`, raising `RewardTimeout` if it has not returned after `seconds`.

    >>> call_with_deadline(lambda: 1 + 1, 1.0)
    2
    """
    if not seconds or seconds <= 0 or can_interrupt():
        with deadline(seconds):
            return fn()
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:  # handed over to the caller's thread below
            result["error"] = e

    worker = threading.Thread(target=run, daemon=True, name="vlrl-reward")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise RewardTimeout(f"no result after {seconds} s (the call keeps running in a daemon thread)")
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]
