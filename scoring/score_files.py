"""Score files: one writer (and the readers) of the `<fields...> <score>` text format the toolkit writes."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from runtime.files import write_text


def format_score(value: float) -> str:
    """Scores are float32 from the model; repr of the float64 value is exact and round-trips.

    A trial that could not be scored (on_bad_audio: skip) is written as `nan`."""
    return repr(float(value))


def write_scores(path: str | Path, columns: Sequence[Sequence[str]], scores: Sequence[float]) -> None:
    """One line per row: the string columns, then the score, separated by spaces."""
    lines = [" ".join([*fields, format_score(score)]) for fields, score in zip(zip(*columns), scores)]
    write_text(path, "\n".join(lines) + ("\n" if lines else ""))
