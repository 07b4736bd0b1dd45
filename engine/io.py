"""Atomic result files: written to a temporary name in the same folder, flushed, then renamed."""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise


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
    """Scores are float32 from the model; repr of the float64 value is exact and round-trips."""
    return repr(float(value))


def write_scores(path: str | Path, columns: Sequence[Sequence[str]], scores: Sequence[float]) -> None:
    """One line per row: the string columns, then the score, separated by spaces."""
    lines = [" ".join([*fields, format_score(score)]) for fields, score in zip(zip(*columns), scores)]
    write_text(path, "\n".join(lines) + ("\n" if lines else ""))
