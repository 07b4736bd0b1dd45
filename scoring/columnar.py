"""Release-scale reading of the ASVspoof 5 evaluation package's score and key files, in C (pyarrow).

An accelerator for `scoring.asvspoof5_files`, never a second definition: each function returns the same
arrays as the line-by-line reader there, or None whenever anything is unusual (a bad line, a byte-order mark,
a field the line reader would split or refuse, a number outside the strict syntax of
`scoring.score_files.parse_number`, a trial missing from one file). The line reader then reads the files
again and either returns the same result or stops at the first bad line with its number. So a million
well-formed trials read in about a second, and every error still names its file and line.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv

from data.asvspoof5 import BONAFIDE
from data.protocols import CM_KEYS, SASV_KEYS
from scoring.score_files import NUMBER_PATTERN

# What str.split() splits on (str.isspace), or an empty field (a doubled delimiter): the line reader would
# see other fields there than a one-character delimiter does.
_SPLITS = r"^$|[\t-\r\x1c-\x20\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
_NUMBER = f"^(?:{NUMBER_PATTERN})$"
# Whole-field matches by pattern, not pc.equal(column, "-"): a Python value as an argument makes pyarrow
# import pandas where it is installed (a third of a second).
_ABSENT = "^-$"
_DUMMY = "^dummy$"

Table = dict[str, pa.Array]


def read_table(path: str | Path, aliases: dict[str, str]) -> Table | None:
    """Columns by header name (`aliases` applied) of a header-first table whose fields are separated by one tab
    (or, in a header without tabs, one space); None unless it reads exactly as the line reader would read it."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline()
        header = first.decode("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        return None
    if not header or header.startswith("\ufeff"):
        return None
    delimiter = "\t" if "\t" in header else " "
    names = header.split(delimiter)
    if len(set(names)) != len(names):
        return None
    options = csv.ConvertOptions(column_types={name: pa.string() for name in names}, strings_can_be_null=False,
                                 quoted_strings_can_be_null=False, null_values=[], check_utf8=True)
    parse = csv.ParseOptions(delimiter=delimiter, quote_char=False, escape_char=False, newlines_in_values=False,
                             ignore_empty_lines=True)
    try:
        table = csv.read_csv(path, parse_options=parse, convert_options=options)
    except (pa.ArrowException, OSError):
        return None
    if table.num_rows == 0 or table.column_names != names:
        return None
    columns = {aliases.get(name, name): table.column(name).combine_chunks() for name in names}
    if len(columns) != len(names):
        return None
    if not _plain_ascii(path, delimiter):  # then each field's own check, slower
        for column in columns.values():
            if pc.any(pc.match_substring_regex(column, _SPLITS)).as_py():
                return None
    return columns


def _plain_ascii(path: str | Path, delimiter: str) -> bool:
    """Whether the file is ASCII, its only whitespace the delimiter and LF, and no field empty: then the
    delimiter and str.split() see the same fields on every line, with no per-field check (one pass in numpy)."""
    data = np.fromfile(path, dtype=np.uint8)
    separator, newline = ord(delimiter), ord("\n")
    if data.size == 0 or data.max() >= 0x80:
        return False
    low = data[data <= 0x20]  # whitespace and control bytes: only the delimiter and LF may occur
    if np.count_nonzero((low != separator) & (low != newline)):
        return False
    at = np.flatnonzero(data == separator)
    if at.size == 0:
        return True
    if at[0] == 0 or at[-1] == data.size - 1:
        return False
    # An empty field: a delimiter next to another one or to a line end.
    before, after = data[at - 1], data[at + 1]
    return not ((before == separator) | (before == newline) | (after == separator) | (after == newline)).any()


def _trial_names(table: Table, trial_columns: tuple[str, ...]) -> pa.Array:
    """One string per row naming its trial: the trial columns joined by a tab, which no field holds."""
    parts = [table[name] for name in trial_columns]
    return parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "\t")


def _unique_trials(table: Table, trial_columns: tuple[str, ...]) -> pa.Array | None:
    """`_trial_names`, or None when a trial repeats."""
    trials = _trial_names(table, trial_columns)
    return trials if len(pc.unique(trials)) == len(trials) else None


_NUMPY_TYPES = {pa.int32(): np.int32, pa.int64(): np.int64, pa.float64(): np.float64}


def _numpy(array: pa.Array) -> np.ndarray:
    """A null-free int or float array as a read-only numpy view of its buffer (Array.to_numpy would import
    pandas where it is installed: half a second)."""
    if array.null_count or array.type not in _NUMPY_TYPES:
        return array.to_numpy(zero_copy_only=False)
    dtype = np.dtype(_NUMPY_TYPES[array.type])
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


class Labels:
    """A label column as its distinct values (`names`) and each row's index into them (`codes`)."""

    def __init__(self, values: pa.Array) -> None:
        encoded = pc.dictionary_encode(values)
        self.names = np.asarray(encoded.dictionary.to_pylist(), dtype=str)
        self.codes = _numpy(encoded.indices)

    def all_in(self, allowed: tuple[str, ...]) -> bool:
        return set(self.names.tolist()) <= set(allowed)

    def flags(self, wanted: tuple[str, ...]) -> np.ndarray:
        """One flag per row: whether its label is one of `wanted`."""
        return np.isin(self.names, wanted)[self.codes]

    def strings(self) -> np.ndarray:
        return self.names[self.codes]


def scores(values: pa.Array) -> np.ndarray | None:
    """A score column as finite float64 (bit for bit Python's float()), or None unless every field has the
    strict number syntax and a finite value."""
    if not pc.all(pc.match_substring_regex(values, _NUMBER)).as_py():
        return None
    numbers = _numpy(pc.cast(values, pa.float64())).copy()  # writable, owned by numpy
    return numbers if np.isfinite(numbers).all() else None


def read_keys(path: str | Path, trial_columns: tuple[str, ...], track2: bool, aliases: dict[str, str]
              ) -> tuple[pa.Array, dict[str, np.ndarray | None]] | None:
    """(trial names, {cm-label, asv-label, attack, codec} as str arrays or None) of a key file, checked as
    `asvspoof5_files` checks it; the full key table's dummy Track 2 rows dropped."""
    table = read_table(path, aliases)
    required = trial_columns + (("cm-label", "asv-label") if track2 else ("cm-label",))
    if table is None or any(name not in table for name in required):
        return None
    if track2 and "track_2_tag" in table:
        kept = pc.invert(pc.match_substring_regex(table["track_2_tag"], _DUMMY))
        table = {name: column.filter(kept) for name, column in table.items()}
        if len(table["cm-label"]) == 0:
            return None
    trials = _unique_trials(table, trial_columns)
    encoded = {name: Labels(table[name]) for name in ("cm-label", "asv-label", "attack", "codec") if name in table}
    cm_labels = encoded["cm-label"]
    if trials is None or not cm_labels.all_in(CM_KEYS):
        return None
    is_spoof = cm_labels.flags(("spoof",))
    if track2:
        asv_labels = encoded["asv-label"]
        if not asv_labels.all_in(SASV_KEYS) or not np.array_equal(is_spoof, asv_labels.flags(("spoof",))):
            return None
    if "attack" in encoded and (encoded["attack"].flags((BONAFIDE, "-")) & is_spoof).any():
        return None
    columns = {name: encoded[name].strings() if name in encoded else None
               for name in ("cm-label", "asv-label", "attack", "codec")}
    return trials, columns


def read_scores(path: str | Path, header: tuple[str, ...], trial_columns: tuple[str, ...], key_trials: pa.Array,
                aliases: dict[str, str]) -> dict[str, np.ndarray | None] | None:
    """The score columns of a score file with exactly `header`, in the order of `key_trials` (each trial in
    both files once); a column that is `-` on every line is None."""
    table = read_table(path, aliases)
    if table is None or tuple(table) != header or len(table[header[0]]) != len(key_trials):
        return None
    trials = _trial_names(table, trial_columns)
    position = pc.index_in(key_trials, value_set=trials)
    if position.null_count:
        return None
    # The key trials are distinct and as many as these; index_in gives a repeated trial's first line only,
    # so the lines it gives are all distinct exactly when no trial here repeats.
    if np.bincount(_numpy(position), minlength=len(trials)).max() != 1:
        return None
    result: dict[str, np.ndarray | None] = {}
    for name in header[len(trial_columns):]:
        column = table[name].take(position)
        if pc.all(pc.match_substring_regex(column, _ABSENT)).as_py():
            result[name] = None
            continue
        result[name] = scores(column)
        if result[name] is None:
            return None
    return result
