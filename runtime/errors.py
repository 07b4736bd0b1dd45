"""The two kinds of failure the command-line tools report in one line (runtime/cli.py, `run_cli`).

`UserError`: the input is wrong (a config key, a protocol line, an audio file, a checkpoint): exit 2.
`RunFailure`: the input was fine but the run could not finish (a diverged model, no memory left): exit 1.
Each package's own error classes derive from one of them, so the CLI needs no list of them.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input, reported as one line naming the file, line, key or value."""


class RunFailure(Exception):
    """A run that could not finish, reported as one line saying what was kept."""
