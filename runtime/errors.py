"""The two kinds of failure the command-line tools report in one line (runtime/cli.py, `run_cli`).

`UserError`: the input is wrong (a config key, a protocol line, an audio file, a checkpoint): exit 2.
`RunFailure`: the input was fine but the run could not finish (a diverged model, no memory left): exit 1.
Each package's own error classes derive from one of them, so the CLI needs no list of them.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input, reported as one line naming the file, line, key or value."""


class ConfigError(UserError, ValueError):
    """A configuration problem, reported as one line naming the file and key (runtime.config re-exports it;
    defined here so that data.corpora, which runtime.config imports, can raise it)."""


class RunFailure(Exception):
    """A run that could not finish, reported as one line saying what was kept."""


_WORKER_PREFIX = "Caught {name} in DataLoader worker process"


def unwrap_worker_error(error: BaseException) -> BaseException:
    """The project's exception as raised inside a DataLoader worker, without the worker traceback.

    DataLoader re-raises a worker's exception as the same type whose message is
    "Caught X in DataLoader worker process N." plus the whole traceback; the
    original one-line message is the last `module.X: ...` line of that traceback.
    """
    kind = type(error)
    text = str(error)
    if not text.startswith(_WORKER_PREFIX.format(name=kind.__name__)):
        return error
    module = kind.__module__
    name = kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    marker = f"\n{name}: "
    position = text.rfind(marker)
    if position < 0:
        return error
    message = text[position + len(marker):].strip()
    try:
        return kind(message)
    except Exception:  # an exception type that takes other arguments: keep the original
        return error


class WorkerDied(RunFailure):
    """A DataLoader worker process was killed (often by the out-of-memory killer)."""


def worker_died(error: BaseException) -> WorkerDied | None:
    """The one-line failure for `error` when it says that a DataLoader worker died, else None.

    DataLoader reports it from its SIGCHLD handler, so it can surface anywhere in the main process
    (in a forward pass as well as in `next(batches)`)."""
    if not isinstance(error, RuntimeError) or "DataLoader worker (pid" not in str(error):
        return None
    return WorkerDied(f"a data-loading worker process died ({str(error).strip()}); the out-of-memory "
                      f"killer does this: lower loader.n_workers or the batch size")
