"""The evaluation report: pooled, per-attack and per-codec metrics of scored trials, written as report.json,
report.md (the tables a paper prints), report.csv and the plots of scoring.plots, into one folder.

Every number comes from metrics/ (nothing is recomputed here); all are fractions (the markdown shows EERs
in percent). Which metrics a report holds depends on its inputs:
  SASV scores + target/nontarget/spoof keys: sasv_eer, sv_eer, spf_eer, min_a_dcf (the a_dcf package's
      default costs, as `scoring.sasv.sasv_metrics` and the training logs) and a_dcf (ASVspoof 5 Track 2 costs);
  plus CM and ASV scores (a tandem system): min_tdcf (the organisers' ASV error rates) and t_eer;
  CM scores: min_dcf, act_dcf, cllr (bits) and eer of ASVspoof 5 Track 1.
A per-attack cell holds every bona fide trial plus that attack's spoofs, a per-codec cell the trials of that
codec, as the ASVspoof 5 evaluation package does; a cell lacking a class it needs holds None.
Nothing is written unless every input check passes.
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from metrics.eer import as_scores, key_codes
from metrics.errors import MetricError
from runtime import forked
from runtime.files import StagedOutputs, staged_outputs
from scoring.asvspoof5_files import track2_key_text, track2_score_text
from scoring.cells import TrialKinds, cm_cell, cm_det, guarded, sasv_cell
from scoring.scored_trials import ScoredTrials

SASV_METRICS = ("sasv_eer", "sv_eer", "spf_eer", "min_a_dcf", "a_dcf")
TANDEM_METRICS = ("min_tdcf", "t_eer")
CM_METRICS = ("min_dcf", "act_dcf", "cllr", "eer")
PERCENT = ("sasv_eer", "sv_eer", "spf_eer", "t_eer", "eer")
LABELS = {"sasv_eer": "SASV-EER", "sv_eer": "SV-EER", "spf_eer": "SPF-EER", "min_a_dcf": "min a-DCF",
          "a_dcf": "min a-DCF (ASVspoof 5)", "min_tdcf": "min t-DCF", "t_eer": "t-EER", "min_dcf": "CM min DCF",
          "act_dcf": "CM act DCF", "cllr": "CM Cllr", "eer": "CM EER"}
REPORT_FILES = ("report.json", "report.md", "report.csv")
# Every figure a report may hold (scoring.plots), and the Track 2 files of write_sasv_report: a rerun into the
# same folder deletes the ones it does not write, so that the folder holds one report.
REPORT_PLOTS = ("det_sasv.png", "hist_sasv.png", "adcf.png", "det_cm.png", "hist_cm.png", "training.png")
TRACK2_FILES = ("track2_scores.tsv", "track2_keys.tsv")
# The metrics of the package's attack x codec tables, in its order: Track 2, then Track 1.
FULL_TABLE_METRICS = ("a_dcf", "min_tdcf", "t_eer", "min_dcf", "eer", "cllr", "act_dcf")
POOLED = "pooled"
# Reports this large draw their plots in a second process when asked (write_report's plots_beside); on
# smaller ones starting it would cost more than it saves.
PLOTS_BESIDE_FROM = 100_000

Cell = dict[str, Any]


def metric_names(trials: ScoredTrials) -> tuple[str, ...]:
    """The metrics the inputs allow, in report order."""
    names: tuple[str, ...] = ()
    if trials.sasv is not None:
        names += SASV_METRICS + (TANDEM_METRICS if trials.cm is not None and trials.asv is not None else ())
    if trials.cm is not None:
        names += CM_METRICS
    return names


def _cell(trials: ScoredTrials, kinds: TrialKinds, keep: np.ndarray, names: tuple[str, ...], strict: bool
          ) -> Cell:
    """Trial counts and every metric of `names` on the trials in `keep` (flags over the set of `kinds`, whose
    rankings are cut to them).

    `strict` (the pooled cell): a metric that cannot be computed is a MetricError; otherwise it is None."""
    cell: Cell = {}
    if kinds.sasv_codes is not None:
        counts = np.bincount(kinds.sasv_codes[keep], minlength=3)
        cell.update(n_target=int(counts[0]), n_nontarget=int(counts[1]), n_spoof=int(counts[2]))
    else:
        n_spoof = int(np.count_nonzero(keep & kinds.is_spoof))
        cell.update(n_bonafide=int(np.count_nonzero(keep)) - n_spoof, n_spoof=n_spoof)
    cell.update({name: None for name in names})
    cm = cm_det(kinds)  # one CM sort for the tandem and the Track 1 metrics
    if trials.sasv is not None:
        cell.update(guarded(lambda: sasv_cell(kinds, keep, counts, cm, strict), strict))
    if trials.cm is not None:
        cell.update(guarded(lambda: cm_cell(kinds, keep, cm), strict))
    return {name: _plain(value) for name, value in cell.items()}


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, (float, np.floating)) else value


def _conditions(labels: np.ndarray | None, where: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(the distinct labels of the trials in `where`, sorted; each trial's index into them, -1 elsewhere)."""
    if labels is None:
        return [], np.full(where.size, -1)
    names, index = np.unique(labels, return_inverse=True)
    used = np.unique(index[where])
    position = np.full(names.size + 1, -1)
    position[used] = np.arange(used.size)
    return names[used].tolist(), position[np.where(where, index, names.size)]


def attack_codec_table(trials: ScoredTrials, names: tuple[str, ...]) -> dict[str, dict[str, Cell]]:
    """{attack or "pooled": {codec or "pooled": cell}}, as the ASVspoof 5 package's full tables: a cell holds
    the trials of its codec (all of them in the pooled column), of which every bona fide trial and the
    spoofs of its attack (every spoof in the pooled row). Rows and columns in name order. The pooled cell
    is strict (see `_cell`)."""
    is_spoof = trials.cm_keys == "spoof"
    attacks, attack_index = _conditions(trials.attack, is_spoof)  # -1: bona fide
    codecs, codec_index = _conditions(trials.codec, np.ones(is_spoof.size, dtype=bool))
    for name in (*attacks, *codecs):
        if name == POOLED:
            raise MetricError(f"{trials.source}: {POOLED!r} is reserved for the pooled row and column; rename "
                              f"that attack or codec")
    sasv_codes = None if trials.asv_keys is None else key_codes(trials.asv_keys, len(trials))
    kinds = TrialKinds.of(sasv_codes, is_spoof, trials.sasv, trials.cm, trials.asv, trials.asv_org)
    table: dict[str, dict[str, Cell]] = {row: {} for row in (POOLED, *attacks)}
    for column, number in ((POOLED, None), *((codec, number) for number, codec in enumerate(codecs))):
        # A codec's trials become a set of their own: its cells then cost the codec's size, not the list's.
        in_codec = None if number is None else codec_index == number
        column_kinds = kinds if in_codec is None else kinds.subset(in_codec)
        column_attacks = attack_index if in_codec is None else attack_index[in_codec]
        for row_number, row in enumerate(table):
            if row == POOLED:
                keep, cell_kinds = np.ones(column_kinds.is_spoof.size, dtype=bool), column_kinds
            else:
                keep = ~column_kinds.is_spoof | (column_attacks == row_number - 1)
                cell_kinds = column_kinds.within(keep)
            table[row][column] = _cell(trials, cell_kinds, keep, names, strict=row == column == POOLED)
    return table


def build_report(trials: ScoredTrials, first: str | None = None) -> dict[str, Any]:
    """{source, metrics, n_skipped_trials, pooled, per_attack, per_codec, per_attack_codec}; cells as `_cell`.
    `per_attack_codec` is `attack_codec_table` when the codecs are known, else {}.
    `first`: a metric the tables show first (the benchmark's primary one). Skipped trials are left out."""
    trials = trials.kept()
    if len(trials) == 0:
        raise MetricError(f"{trials.source}: no trials to report on")
    if trials.sasv is not None and trials.asv_keys is None:
        raise MetricError(f"{trials.source}: SASV scores need target/nontarget/spoof keys")
    for name in ("sasv", "cm", "asv", "asv_org"):  # finite float64, one per trial (the readers already check)
        values = getattr(trials, name)
        if values is not None and as_scores(values, f"{trials.source}: {name} scores").size != len(trials):
            raise MetricError(f"{trials.source}: {values.size} {name} scores for {len(trials)} trials")
    names = list(metric_names(trials))
    try:
        table = attack_codec_table(trials, tuple(names))
    except MetricError as error:  # say which scores lack a class
        raise MetricError(f"{trials.source}: {error}") from None
    if first in names:
        names.insert(0, names.pop(names.index(first)))
    return {
        "source": trials.source,
        "metrics": names,
        "n_skipped_trials": trials.n_skipped,
        # Where the min t-DCF's ASV error rates come from (see docs/evaluation.md).
        "tdcf_asv_rates": None if "min_tdcf" not in names else
        "built-in pooled" if trials.asv_org is None else "organisers' ASV scores per cell",
        POOLED: table[POOLED][POOLED],
        "per_attack": {attack: row[POOLED] for attack, row in table.items() if attack != POOLED},
        "per_codec": {codec: cell for codec, cell in table[POOLED].items() if codec != POOLED},
        "per_attack_codec": table if trials.codec is not None else {},
    }


# ------------------------------------------------------------------ text forms


def _shown(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if name in PERCENT else f"{value:.4f}"


def pooled_text(report: dict[str, Any]) -> str:
    """One line: the pooled metrics and the trial count."""
    pooled = report[POOLED]
    parts = [f"{LABELS[name]} {_shown(name, pooled[name])}{'%' if name in PERCENT else ''}"
             for name in report["metrics"]]
    trials = sum(value for name, value in pooled.items() if name.startswith("n_"))
    return f"pooled: {'  '.join(parts)} ({trials} trials)"


def _counts(cell: Cell) -> str:
    return ", ".join(f"{value} {name[2:]}" for name, value in cell.items() if name.startswith("n_"))


def _table(report: dict[str, Any], rows: dict[str, Cell], what: str) -> list[str]:
    names = report["metrics"]
    header = [what, *(f"{LABELS[n]} (%)" if n in PERCENT else LABELS[n] + (" (bits)" if n == "cllr" else "")
                      for n in names)]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(names)]
    for condition, cell in [*rows.items(), (f"**{POOLED}**", report[POOLED])]:
        lines.append("| " + " | ".join([condition, *(_shown(n, cell[n]) for n in names)]) + " |")
    return lines


def report_markdown(report: dict[str, Any]) -> str:
    """Markdown tables: attacks as rows plus the pooled row; the same per codec when codecs are known."""
    lines = ["# Evaluation report", "",
             f"Scores: `{report['source']}`; {_counts(report[POOLED])}"
             + (f"; {report['n_skipped_trials']} trials left out (score nan, bad audio)"
                if report["n_skipped_trials"] else "") + ".",
             "EERs in percent; DCFs normalised; Cllr in bits. `-`: not computable for that condition.", ""]
    if report["per_attack"]:
        lines += ["## Per attack", "", "Each row: every bona fide trial plus that attack's spoofs.", "",
                  *_table(report, report["per_attack"], "attack"), ""]
    if report["per_codec"]:
        lines += ["## Per codec", "", "Each row: the trials of that codec.", "",
                  *_table(report, report["per_codec"], "codec"), ""]
    for column, cells in report.get("per_condition", {}).items():  # scoring.cm_conditions' other columns
        lines += [f"## Per {column}", "", *_table(report, cells, column), ""]
    if not report["per_attack"] and not report["per_codec"] and not report.get("per_condition"):
        lines += ["## Pooled", "", *_table(report, {}, "condition"), ""]
    full = [name for name in FULL_TABLE_METRICS if name in report["metrics"]]
    if report["per_attack_codec"] and full:
        lines += ["## Per attack x codec", "",
                  "As the ASVspoof 5 evaluation package prints them: rows are attacks (every bona fide trial plus "
                  "that attack's spoofs), columns codecs (that codec's trials); `pooled` is every attack or codec.",
                  ""]
        for name in full:
            lines += [f"### {LABELS[name]}{' (%)' if name in PERCENT else ''}", "",
                      *_full_table(report["per_attack_codec"], name), ""]
    return "\n".join(lines)


def _full_table(table: dict[str, dict[str, Cell]], name: str) -> list[str]:
    """One metric's attack x codec table, in the package's number formats (1.3f percent for EERs, else 1.5f)."""
    codecs = list(next(iter(table.values())))
    lines = ["| attack | " + " | ".join(codecs) + " |", "| --- |" + " ---: |" * len(codecs)]
    for attack, row in table.items():
        values = ["-" if row[codec][name] is None else
                  (f"{100 * row[codec][name]:1.3f}" if name in PERCENT else f"{row[codec][name]:1.5f}")
                  for codec in codecs]
        lines.append("| " + " | ".join([attack, *values]) + " |")
    return lines


def report_csv(report: dict[str, Any]) -> str:
    """`group,condition,<counts>,<metrics>`: one row pooled, one per attack, one per codec, one per attack and
    codec (condition `<attack> <codec>`), exact fractions."""
    counts = [name for name in report[POOLED] if name.startswith("n_")]
    columns = ["group", "condition", *counts, *report["metrics"]]
    rows = [(POOLED, POOLED, report[POOLED])]
    rows += [("attack", name, cell) for name, cell in report["per_attack"].items()]
    rows += [("codec", name, cell) for name, cell in report["per_codec"].items()]
    rows += [(column, name, cell) for column, cells in report.get("per_condition", {}).items()
             for name, cell in cells.items()]
    rows += [("attack_codec", f"{attack} {codec}", cell) for attack, row in report["per_attack_codec"].items()
             for codec, cell in row.items() if POOLED not in (attack, codec)]
    buffer = io.StringIO()
    buffer.write(",".join(columns) + "\n")
    for group, condition, cell in rows:
        values = ["" if cell[name] is None else repr(cell[name]) for name in columns[2:]]
        buffer.write(",".join([group, _csv_field(condition), *values]) + "\n")
    return buffer.getvalue()


def _csv_field(text: str) -> str:
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


# ------------------------------------------------------------------ writing


def write_report(folder: str | Path, trials: ScoredTrials, *, metrics_csv: str | Path | None = None,
                 extra_files: dict[str, str] | None = None, first: str | None = None,
                 outputs: StagedOutputs | None = None, plots: bool = True, plots_beside: bool = False,
                 extend: Callable[[dict[str, Any]], str] | None = None) -> dict[str, Any]:
    """Compute the report and render its plots, then write every file into `folder`, all or nothing: the files
    are staged beside the folder and moved in together, and report files of an earlier run that this one
    does not write (a plot) are deleted then. Any bad input raises before anything is written.

    `extra_files`: name -> text written alongside. `outputs`: stage into the caller's set of files (committed
    by the caller, with its other outputs) instead of one of the report's own. `plots`: False writes no PNG
    (config key report_plots; a bad metrics_csv is still refused). `plots_beside`: draw the plots
    of a large report (PLOTS_BESIDE_FROM trials) in a forked process while this one computes the tables, for
    a process that holds no GPU or thread pools of its own (evaluate.py). `extend`: adds tables to the
    computed report and returns markdown for the end of report.md (scoring.cm_conditions)."""
    from scoring.plots import read_training_log, render_plots  # matplotlib loads only when a plot is drawn

    trials = trials.kept()  # the skipped trials (score nan) are counted, not drawn
    if not plots and metrics_csv is not None:
        read_training_log(metrics_csv)  # its bad input is refused whether or not it is drawn
    beside = forked.start(lambda: render_plots(trials, metrics_csv)) \
        if plots and plots_beside and len(trials) >= PLOTS_BESIDE_FROM else None
    try:
        report = build_report(trials, first)
        appendix = extend(report) if extend is not None else ""
        texts = {"report.json": json.dumps(report, indent=2) + "\n", "report.md": report_markdown(report) + appendix,
                 "report.csv": report_csv(report), **(extra_files or {})}
        images = {} if not plots else render_plots(trials, metrics_csv) if beside is None else beside.result()
    finally:
        if beside is not None:
            beside.cancel()  # nothing to stop when its images arrived
    folder = Path(folder)
    with nullcontext(outputs) if outputs is not None else staged_outputs() as staged:
        for name, text in texts.items():
            staged.write_text(folder / name, text)
        for name, image in images.items():
            staged.write_bytes(folder / name, image)
        for name in (*REPORT_FILES, *REPORT_PLOTS, *TRACK2_FILES):
            staged.remove(folder / name)  # kept when written above
    return report


def primary_metric(report: dict[str, Any]) -> dict[str, float]:
    """{"a_dcf": value} when the report leads with ASVspoof 5's a-DCF (and it was computable), else {}: what
    metrics_*.json and the log lines add on that benchmark."""
    value = report[POOLED].get("a_dcf")
    return {"a_dcf": value} if report["metrics"][0] == "a_dcf" and value is not None else {}


def write_sasv_report(folder: str | Path, scored: ScoredTrials, *, first: str | None = None,
                      metrics_csv: str | Path | None = None, outputs: StagedOutputs | None = None,
                      plots: bool = True, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of the toolkit's SASV scores (`scored`: every trial of the list with its ids, skipped ones
    nan, as ScoredTrials.of_sasv_trials makes them), plus the official ASVspoof 5 Track 2 files of the same
    trials: track2_scores.tsv (sasv-score, and the CM and ASV parts when given, else `-`) and
    track2_keys.tsv. Skipped trials (bad audio) are left out of the metrics and keep `nan` in the files.
    `calibration`: the calibration loss of these scores (scoring.calibration.calibration_metrics), added to
    report.json under `calibration` and as a table at the end of report.md."""
    speakers, utterances = scored.speaker.tolist(), scored.utterance.tolist()
    codec = None if scored.codec is None else scored.codec.tolist()
    extra = {"track2_scores.tsv": track2_score_text(speakers, utterances, scored.sasv, scored.cm, scored.asv),
             "track2_keys.tsv": track2_key_text(speakers, utterances, scored.asv_keys.tolist(),
                                                scored.attack.tolist(), codec)}

    def add_calibration(report: dict[str, Any]) -> str:
        report["calibration"] = calibration
        return calibration_markdown(calibration)

    return write_report(folder, scored.as_float64(), metrics_csv=metrics_csv, extra_files=extra, first=first,
                        outputs=outputs, plots=plots, extend=add_calibration if calibration else None)


CALIBRATION_SCORES = {"asv": "ASV", "cm": "CM", "sasv": "SASV"}


def calibration_markdown(calibration: dict[str, Any]) -> str:
    """report.md's table of the calibration loss: the actual costs of the dev-fitted LLRs and decision threshold
    next to the minimum ones (docs/calibration.md)."""
    def number(entry: dict[str, Any], name: str) -> str:
        value = entry.get(name)
        return "-" if value is None else f"{value:.4f}"

    lines = ["", "## Calibration (fitted on dev)", "",
             "Actual costs of the calibrated LLRs (Bayes decisions at the calibration prior) next to the minimum "
             "ones; Cllr in bits. A score without a calibration (see the notes of weights/calibration.json) is not "
             "listed.", "",
             "| score | prior | min DCF | act DCF | min Cllr | Cllr |", "|---|---|---|---|---|---|"]
    for score, label in CALIBRATION_SCORES.items():
        entry = calibration.get(score)
        if entry and "act_dcf" in entry:
            lines.append(f"| {label} | {entry['prior']:g} | {number(entry, 'min_dcf')} | {number(entry, 'act_dcf')} "
                         f"| {number(entry, 'min_cllr')} | {number(entry, 'cllr')} |")
    sasv = calibration.get("sasv") or {}
    if "act_a_dcf" in sasv:
        track2 = f"; with the ASVspoof 5 costs a-DCF {sasv['act_a_dcf_track2']:.4f}, min {sasv['a_dcf']:.4f}" \
            if "act_a_dcf_track2" in sasv else ""
        lines += ["", f"SASV decision at the dev threshold {sasv['threshold']:.6g} (the dev minimum of "
                      f"{sasv['decision_metric']}): a-DCF {sasv['act_a_dcf']:.4f}, min a-DCF {sasv['min_a_dcf']:.4f}"
                      f"{track2}."]
    notes = [f"{score}: {entry['note']}" for score, entry in calibration.items() if entry.get("note")]
    lines += ["", *(f"Not measured: {note}" for note in notes)] if notes else []
    return "\n".join(lines) + "\n"
