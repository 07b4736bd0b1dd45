"""Stop at a safe point on SIGINT (Ctrl-C) or SIGTERM (schedulers, `kill`) instead of dying mid-step.

Inside `StopRequest`, the first signal only records itself; the training loop polls
`stop.requested` at batch boundaries, saves a resumable checkpoint and raises
`RunInterrupted`. A second signal aborts at once (KeyboardInterrupt); files are written
atomically, so the last checkpoint stays intact either way. With `second_aborts=False` (under
torchrun, which forwards a signal that the workers may also have received directly, and kills
them itself after its shutdown timeout) later signals are ignored.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """A run stopped on a signal after saving what it needed; the message says how to go on."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell convention for "terminated by signal N"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequest:
    """Context manager that turns SIGINT/SIGTERM into a flag (only in the main thread; elsewhere a no-op)."""

    def __init__(self, *, second_aborts: bool = True) -> None:
        self.requested: int | None = None
        self.second_aborts = second_aborts
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested is not None:
            if not self.second_aborts:
                return
            raise KeyboardInterrupt(f"second {signal_name(signum)}: stopping without saving")
        self.requested = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def check(self, what: str) -> None:
        """Raise RunInterrupted (naming `what` was stopped) when a signal came in."""
        if self.requested is not None:
            raise RunInterrupted(f"interrupted by {signal_name(self.requested)} during {what}", self.requested)
