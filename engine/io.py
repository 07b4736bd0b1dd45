"""Result files (text, JSON, pickle, CSV, scores), each written atomically through `data.atomic`."""
from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path
from typing import Any, Iterable, Sequence

from data.atomic import atomic_open


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_pickle(path: str | Path, value: Any) -> None:
    with atomic_open(path, "wb") as handle:
        pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    write_text(path, buffer.getvalue())


def format_score(value: float) -> str:
    """Scores are float32 from the model; repr of the float64 value is exact and round-trips.

    A trial that could not be scored (on_bad_audio: skip) is written as `nan`."""
    return repr(float(value))


def write_scores(path: str | Path, columns: Sequence[Sequence[str]], scores: Sequence[float]) -> None:
    """One line per row: the string columns, then the score, separated by spaces."""
    lines = [" ".join([*fields, format_score(score)]) for fields, score in zip(zip(*columns), scores)]
    write_text(path, "\n".join(lines) + ("\n" if lines else ""))
