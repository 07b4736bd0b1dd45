"""CM scores read with the official keys of a CM evaluation set (ASVspoof 2021 LA / DF eval, In-the-Wild), and
the report's per-condition tables of that set (docs/cm_benchmarks.md).

`read_cm_benchmark(scores, keys)` tells the corpus from the keys file's layout (data.corpora.corpus_for_keys),
keeps the trials of one subset (2021: `eval` by default, as the organisers' package), joins the `trial score`
lines (save_cm_score.py's score_CM_eval*.txt, or a score file for the organisers' package) and returns the
ScoredTrials of scoring.report plus a `ConditionTables` extension, which adds to the report:
  per_condition   {column: {value: cell}} for the corpus's condition columns other than attack and codec (those
                  are the report's own per_attack / per_codec tables): 2021 LA transmission, 2021 DF source and
                  vocoder, In-the-Wild speaker. A column whose values occur on spoofs only (vocoder) makes cells of
                  every bona fide trial plus that value's spoofs, as the organisers' package does for attacks;
                  any other column the trials of that value.
  min_tdcf        2021 LA with the ASV keys and the organisers' ASV scores: the min t-DCF of every cell, its ASV
                  error rates (C0, C1, C2) from the ASV trials of the same cell, as the package's
                  --recompute-c012 (ASVspoof 2021 costs).
  package_table   the tables the organisers' package prints (2021 LA attack x codec, DF vocoder x codec, EER and
                  min t-DCF), rows and columns in its order and with its tags.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.corpora import corpus_for_keys
from data.corpora.asvspoof2021 import (
    DEFAULT_SUBSET,
    SUBSET_VALUES,
    SUBSETS,
    ASVspoof2021LA,
    read_asv_scores,
)
from data.protocols import ProtocolError, check_unique, read_fields
from metrics.asvspoof5 import ASVErrorRates, min_tdcf_from_det, track1_from_scores
from metrics.eer import det_curve, eer_from_det
from metrics.errors import MetricError
from scoring.asvspoof5_files import ScoredTrials
from scoring.score_files import parse_score

POOLED = "pooled"
PACKAGE_POOLED = "Pooled"
CM_CELL_METRICS = ("min_dcf", "act_dcf", "cllr", "eer")
# Columns whose values only spoofs carry: a cell holds every bona fide trial plus that value's spoofs.
SPOOF_ONLY = ("attack", "vocoder")
# ASVspoof 2021 t-DCF costs (eval-package/config.py cost_model) equal the ASVspoof 5 ones min_tdcf_from_det
# uses: Pspoof 0.05, Ptar 0.95 x 0.99, Pnon 0.95 x 0.01, Cmiss 1, Cfa 10, Cfa_spoof 10.
AUDIO_SUFFIXES = (".flac", ".wav")


class BenchmarkInputError(ProtocolError):
    """A flag that does not fit the keys file given (a subset of a corpus without subsets, ...)."""


@dataclass
class ASVTrials:
    """The organisers' ASV scores of the chosen subset with each trial's label and conditions."""

    scores: np.ndarray
    labels: np.ndarray  # target / nontarget / spoof
    conditions: dict[str, np.ndarray]


@dataclass
class ConditionTables:
    """The per-condition tables of one CM evaluation set (scoring.report's extension hook)."""

    corpus: type
    subset: str | None
    keys: str
    scores: np.ndarray  # CM scores of the kept trials (finite)
    is_spoof: np.ndarray
    conditions: dict[str, np.ndarray]  # column -> value per kept trial (attack included)
    asv: ASVTrials | None = None
    asv_source: str | None = None
    n_keys: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ cells

    def _masks(self, column: str, value: str, asv: bool = False) -> np.ndarray:
        """The trials of a cell of `column` = `value` (CM trials, or the ASV trials when `asv`)."""
        values = (self.asv.conditions if asv else self.conditions)[column]
        spoof = (self.asv.labels == "spoof") if asv else self.is_spoof
        if column in SPOOF_ONLY:
            return ~spoof | (values == value)
        return values == value

    def _cell(self, keep: np.ndarray, asv_keep: np.ndarray | None) -> dict[str, Any]:
        bona, spoof = self.scores[keep & ~self.is_spoof], self.scores[keep & self.is_spoof]
        cell: dict[str, Any] = {"n_bonafide": int(bona.size), "n_spoof": int(spoof.size)}
        cell.update(dict.fromkeys(CM_CELL_METRICS))
        if bona.size and spoof.size:
            cell.update(track1_from_scores(bona, spoof))
        if self.asv is not None:
            cell["min_tdcf"] = self._min_tdcf(bona, spoof, asv_keep)
        return cell

    def _min_tdcf(self, bona: np.ndarray, spoof: np.ndarray, asv_keep: np.ndarray | None) -> float | None:
        """The package's min t-DCF of a cell: ASV error rates at the ASV EER threshold of the cell's target and
        nontarget trials (spoof rate: the share of its spoofs the ASV accepts); None where a class is missing."""
        labels = self.asv.labels if asv_keep is None else self.asv.labels[asv_keep]
        scores = self.asv.scores if asv_keep is None else self.asv.scores[asv_keep]
        target, nontarget, spoof_asv = (scores[labels == name] for name in ("target", "nontarget", "spoof"))
        if not (bona.size and spoof.size and target.size and nontarget.size and spoof_asv.size):
            return None
        _, threshold = eer_from_det(*det_curve(target, nontarget))
        rates = ASVErrorRates(pfa_nontarget=np.count_nonzero(nontarget >= threshold) / nontarget.size,
                              pmiss_target=np.count_nonzero(target < threshold) / target.size,
                              pfa_spoof=np.count_nonzero(spoof_asv >= threshold) / spoof_asv.size)
        try:
            return min_tdcf_from_det(det_curve(bona, spoof), rates)
        except MetricError:
            return None

    def cell(self, filters: dict[str, str]) -> dict[str, Any]:
        """The cell of the trials matching every `column: value` of `filters` (pooled: {})."""
        keep = np.ones(self.scores.size, dtype=bool)
        asv_keep = None if self.asv is None else np.ones(self.asv.scores.size, dtype=bool)
        for column, value in filters.items():
            keep &= self._masks(column, value)
            if asv_keep is not None:
                asv_keep &= self._masks(column, value, asv=True)
        return self._cell(keep, asv_keep)

    # ------------------------------------------------------------------ the report's extension

    def extend(self, report: dict[str, Any]) -> None:
        """Adds per_condition, the benchmark's description, the min t-DCF and the package's table."""
        report["benchmark"] = {"dataset": self.corpus.name, "title": self.corpus.title, "keys": self.keys,
                               "subset": self.subset, "n_trials_in_keys": self.n_keys,
                               "tdcf_asv_scores": self.asv_source}
        report["per_condition"] = {
            column: {value: self.cell({column: value}) for value in _ordered(self.conditions[column])}
            for column in self.corpus.condition_columns if column not in ("attack", "codec")}
        if self.asv is not None:
            self._add_min_tdcf(report)
        if self.corpus.package_tables:
            report["package_table"] = self.package_table()

    def _add_min_tdcf(self, report: dict[str, Any]) -> None:
        """min_tdcf into every cell of the report's own tables (pooled, per attack, per codec, attack x codec)."""
        report[POOLED]["min_tdcf"] = self.cell({})["min_tdcf"]
        for attack, cell in report["per_attack"].items():
            cell["min_tdcf"] = self.cell({"attack": attack})["min_tdcf"]
        for codec, cell in report["per_codec"].items():
            cell["min_tdcf"] = self.cell({"codec": codec})["min_tdcf"]
        for attack, row in report["per_attack_codec"].items():
            for codec, cell in row.items():
                filters = {name: value for name, value in (("attack", attack), ("codec", codec)) if value != POOLED}
                cell["min_tdcf"] = self.cell(filters)["min_tdcf"] if filters else report[POOLED]["min_tdcf"]
        report["metrics"].insert(1 if report["metrics"][:1] == ["eer"] else 0, "min_tdcf")
        report["tdcf_asv_rates"] = "organisers' ASV scores per cell (ASVspoof 2021 package, --recompute-c012)"

    def package_table(self) -> dict[str, Any]:
        """{rows, columns (printed tags), eer (percent), min_tdcf}: the package's tables, None for a cell it
        prints as nan."""
        (row_column, rows), (column_column, columns) = self.corpus.package_tables
        eer, tdcf = [], []
        for row, _ in [*rows, (PACKAGE_POOLED, PACKAGE_POOLED)]:
            eer.append([])
            tdcf.append([])
            for column, _ in [*columns, (PACKAGE_POOLED, PACKAGE_POOLED)]:
                filters = {name: value for name, value in ((row_column, row), (column_column, column))
                           if value != PACKAGE_POOLED}
                cell = self.cell(filters)
                eer[-1].append(None if cell["eer"] is None else 100 * cell["eer"])
                tdcf[-1].append(cell.get("min_tdcf"))
        table = {"rows": [tag for _, tag in rows] + [PACKAGE_POOLED],
                 "columns": [tag for _, tag in columns] + [PACKAGE_POOLED], "row_factor": row_column,
                 "column_factor": column_column, "eer": eer}
        if self.asv is not None:
            table["min_tdcf"] = tdcf
        return table

    def markdown(self, report: dict[str, Any]) -> str:
        """The package's tables, in its number formats (min t-DCF 1.4f, EER % 1.2f)."""
        table = report.get("package_table")
        if not table:
            return ""
        lines = ["", f"## As the {self.corpus.title.rsplit(' ', 1)[0]} evaluation package prints it", "",
                 f"Rows: {table['row_factor']} (every bona fide trial plus those spoofs); columns: "
                 f"{table['column_factor']} (that condition's trials). `-`: a class is missing.", ""]
        for name, form, title in (("min_tdcf", "1.4f", "min t-DCF"), ("eer", "1.2f", "EER (%)")):
            if name not in table:
                continue
            lines += [f"### {title}", "", "| | " + " | ".join(table["columns"]) + " |",
                      "| --- |" + " ---: |" * len(table["columns"])]
            for row, values in zip(table["rows"], table[name]):
                lines.append(f"| {row} | " + " | ".join("-" if v is None else format(v, form) for v in values) + " |")
            lines.append("")
        return "\n".join(lines)


def _ordered(values: np.ndarray) -> list[str]:
    return sorted(set(values.tolist()))


# ------------------------------------------------------------------ reading


def _trial_id(text: str) -> str:
    for suffix in AUDIO_SUFFIXES:
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


def _read_scores(path: str | Path) -> dict[str, tuple[int, float]]:
    """trial -> (line, score) of a `trial score` file; `nan` (bad audio, skipped) kept."""
    scores: dict[str, tuple[int, float]] = {}
    seen: dict = {}
    for number, fields in read_fields(path, "CM score file"):
        if len(fields) != 2:
            raise ProtocolError(f"{path}:{number}: CM score lines have 2 fields (trial score), got {len(fields)}")
        trial = _trial_id(fields[0])
        check_unique(seen, trial, path, number, f"trial {trial}")
        scores[trial] = (number, parse_score(path, number, fields[1], column="CM score", allow_nan=True))
    if not scores:
        raise ProtocolError(f"{path}: CM score file is empty")
    return scores


def read_cm_benchmark(score_path: str | Path, key_path: str | Path, subset: str | None = None,
                      asv_keys: str | Path | None = None, asv_scores: str | Path | None = None
                      ) -> tuple[ScoredTrials, ConditionTables]:
    """The CM scores of `score_path` joined with the official keys `key_path` (see the module's doc).

    `subset`: 2021 keys' progress / eval / hidden_track (default eval). `asv_keys` / `asv_scores`: the 2021 LA
    ASV keys and the organisers' ASV scores for the min t-DCF; when not given and both lie where the keys
    release puts them beside the CM keys (../ASV/), they are used. Trials of the subset without a score are an
    error; scores of the keys' other subsets are ignored, of trials not in the keys an error."""
    corpus = corpus_for_keys(key_path)
    rows = corpus.read_key_rows(key_path)
    has_subsets = all("subset" in row.entry.conditions for row in rows)
    if has_subsets:
        subset = DEFAULT_SUBSET if subset is None else subset
        if subset not in SUBSETS:
            raise BenchmarkInputError(f"{key_path}: unknown subset {subset!r}; expected one of {', '.join(SUBSETS)}")
        kept = [row for row in rows if row.entry.conditions["subset"] == subset]
        if not kept:
            raise BenchmarkInputError(f"{key_path}: no trial of subset {subset!r}")
    elif subset is not None:
        raise BenchmarkInputError(f"{key_path}: --subset applies to ASVspoof 2021 keys; {corpus.title} has none")
    else:
        kept = rows
    scores = _read_scores(score_path)
    known = {row.entry.utterance for row in rows}
    for trial, (number, _) in scores.items():
        if trial not in known:
            raise ProtocolError(f"{score_path}:{number}: trial {trial} is not in {key_path}")
    values = np.empty(len(kept))
    for index, row in enumerate(kept):
        if row.entry.utterance not in scores:
            raise ProtocolError(f"{score_path}: no score for trial {row.entry.utterance} ({key_path}:{row.line})")
        values[index] = scores[row.entry.utterance][1]
    finite = np.isfinite(values)  # nan: a file skipped for bad audio
    entries = [row.entry for row, ok in zip(kept, finite) if ok]
    is_spoof = np.array([e.key == "spoof" for e in entries], dtype=bool)
    columns = {"attack": np.array([e.attack for e in entries], dtype=str)}
    columns.update({name: np.array([e.conditions[name] for e in entries], dtype=str)
                    for name in corpus.condition_columns if name != "attack"})
    trials = ScoredTrials(source=f"{score_path} (keys {key_path}" + (f", subset {subset})" if subset else ")"),
                          cm_keys=np.where(is_spoof, "spoof", "bonafide"), cm=values[finite],
                          attack=columns["attack"] if "attack" in corpus.condition_columns else None,
                          codec=columns.get("codec"), n_dropped=int(np.count_nonzero(~finite)))
    tables = ConditionTables(corpus, subset, str(key_path), values[finite], is_spoof, columns, n_keys=len(rows))
    asv_keys, asv_scores = _asv_files(corpus, key_path, asv_keys, asv_scores)
    if asv_keys is not None:
        tables.asv = _read_asv(asv_keys, asv_scores, subset)
        tables.asv_source = f"{asv_scores} (keys {asv_keys})"
    return trials, tables


def _asv_files(corpus: type, key_path: str | Path, asv_keys: str | Path | None, asv_scores: str | Path | None
               ) -> tuple[Path | None, Path | None]:
    if (asv_keys is None) != (asv_scores is None):
        raise BenchmarkInputError(f"{key_path}: --asv_keys and --asv_scores go together")
    if asv_keys is not None and corpus is not ASVspoof2021LA:
        raise BenchmarkInputError(f"{key_path}: ASV keys serve the min t-DCF of ASVspoof 2021 LA; these are "
                                  f"{corpus.title} keys")
    if asv_keys is None and corpus is ASVspoof2021LA:
        beside = Path(key_path).parent.parent / "ASV"  # keys/LA/CM/ -> keys/LA/ASV/
        found = beside / "trial_metadata.txt", beside / "ASVTorch_Kaldi" / "score.txt"
        if all(path.is_file() for path in found):
            return found
    return (None, None) if asv_keys is None else (Path(asv_keys), Path(asv_scores))


def _read_asv(key_path: Path, score_path: Path, subset: str) -> ASVTrials:
    scores, rows = read_asv_scores(score_path, key_path)
    keep = np.array([SUBSET_VALUES[fields[7]] == subset for _, fields in rows], dtype=bool)
    if not keep.any():
        raise BenchmarkInputError(f"{key_path}: no ASV trial of subset {subset!r}")
    kept = [fields for (_, fields), ok in zip(rows, keep) if ok]
    columns = {"codec": 2, "transmission": 3, "attack": 4}
    return ASVTrials(scores[keep], np.array([f[5] for f in kept], dtype=str),
                     {name: np.array([f[index] for f in kept], dtype=str) for name, index in columns.items()})


def report_extension(tables: ConditionTables) -> Callable[[dict[str, Any]], str]:
    """scoring.report.write_report's `extend` hook: adds the tables to the report, returns its extra markdown."""
    def extend(report: dict[str, Any]) -> str:
        tables.extend(report)
        return tables.markdown(report)
    return extend
