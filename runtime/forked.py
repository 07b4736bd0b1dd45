"""One function run in a forked child process while the parent goes on.

For work that needs only data the parent already holds (the evaluation report's plots of a million
trials): the child inherits that data instead of receiving it pickled, and the work takes a second core.
Where `fork` does not exist (Windows, macOS's default), `start` returns None and the caller runs the
function itself.
"""
from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


class Forked:
    """A function running in a child process; `result()` waits for its return value or raises its error."""

    def __init__(self, function: Callable[[], Any]) -> None:
        context = multiprocessing.get_context("fork")
        self._receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(target=_run, args=(function, sender), daemon=True)
        self._process.start()
        sender.close()

    def result(self) -> Any:
        try:
            kind, value = self._receiver.recv()
        except EOFError:  # the child died without answering (killed, out of memory)
            self._process.join()
            raise RuntimeError(f"the child process died (exit code {self._process.exitcode})") from None
        finally:
            self._receiver.close()
        self._process.join()
        if kind == "error":
            raise value
        return value

    def cancel(self) -> None:
        """Stop the child if it still runs (the parent failed and will not wait for it)."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._receiver.close()


def start(function: Callable[[], Any]) -> Forked | None:
    """`function` running in a forked child, or None where fork is not available."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    return Forked(function)


def _run(function: Callable[[], Any], sender: Connection) -> None:
    try:
        answer = ("value", function())
    except BaseException as error:  # handed to the parent, which raises it
        answer = ("error", error)
    try:
        pickle.loads(pickle.dumps(answer))
    except Exception as error:  # an error (or value) that does not survive pickling: its text does
        answer = ("error", RuntimeError(f"{type(answer[1]).__name__}: {answer[1]} ({error})"))
    sender.send(answer)
    sender.close()
