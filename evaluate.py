"""Evaluation report of a score file: pooled, per-attack and per-codec metrics, tables and plots.

Inputs (one kind per call):
  --sasv SCORES --sasv_keys KEYS       ASVspoof 5 Track 2 files (tab-separated, header line):
                                       `spk filename cm-score asv-score sasv-score` (`-` for an absent part)
                                       and `spk filename cm-label asv-label [attack] [codec]`
  --asv_org FILE                       with --sasv: the organisers' ASV scores of the same trials (Track 2 format,
                                       asv-score filled) give the min t-DCF its ASV error rates per cell, as
                                       the package's evaluation_full.py --asv_org; without it, its built-in
                                       pooled rates
  --cm SCORES --cm_keys KEYS           ASVspoof 5 Track 1 files: `filename cm-score`, `filename cm-label [attack]
                                       [codec]`; or CM scores `trial score` (save_cm_score.py's score_CM_eval*.txt)
                                       with the official keys of a CM evaluation set: ASVspoof 2021 LA / DF
                                       keys/{LA,DF}/CM/trial_metadata.txt, In-the-Wild meta.csv (told by the
                                       file's layout; per-condition tables, docs/cm_benchmarks.md)
  --subset NAME                        with 2021 keys: progress, eval (default, as the organisers' package) or
                                       hidden_track
  --asv_keys FILE --asv_scores FILE    with 2021 LA keys: keys/LA/ASV/trial_metadata.txt and the organisers'
                                       ASV scores, for the min t-DCF (default: those beside the CM keys, if there)
  --sasv_scores FILE --trials PROTOCOL this toolkit's `SPK UTT KEY score` (scores/eval.txt, score_SASV_eval.txt)
                                       and its trial list (`SPK UTT ATTACK KEY`, or an ASVspoof 5 Track 2 trial
                                       list); --cm_protocol takes the attack labels from a CM protocol instead
                                       (`SPK UTT - ATTACK KEY`, or an ASVspoof 5 utterance list)
  --metrics_csv FILE                   also plot training curves from main.py's metrics.csv
Writes into --out (default `report`): report.json, report.md, report.csv and PNG plots (docs/evaluation.md),
and prints the pooled line. Bad input: one line naming the file and line, and nothing written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from data.protocols import ProtocolError
from runtime.cli import run_cli
from runtime.files import check_output_place
from scoring.asvspoof5_files import read_sasv_score_file, read_track1, read_track2
from scoring.report import pooled_text, write_report


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sasv", help="ASVspoof 5 Track 2 score file")
    parser.add_argument("--sasv_keys", help="ASVspoof 5 Track 2 key file")
    parser.add_argument("--asv_org", help="with --sasv: the organisers' ASV scores, for the min t-DCF")
    parser.add_argument("--cm", help="ASVspoof 5 Track 1 (CM) score file")
    parser.add_argument("--cm_keys", help="ASVspoof 5 Track 1 key file, or the official keys of a CM evaluation "
                                          "set (2021 LA/DF trial_metadata.txt, In-the-Wild meta.csv)")
    parser.add_argument("--subset", help="with 2021 keys: progress, eval (default) or hidden_track")
    parser.add_argument("--asv_keys", help="with 2021 LA keys: keys/LA/ASV/trial_metadata.txt (min t-DCF)")
    parser.add_argument("--asv_scores", help="with --asv_keys: the organisers' ASV scores (ASVTorch_Kaldi/score.txt)")
    parser.add_argument("--sasv_scores", help="this toolkit's SASV scores, `SPK UTT KEY score`")
    parser.add_argument("--trials", help="the trial list of --sasv_scores (asv.{dev,eval}.gi.trl.txt or "
                                             "ASVspoof5.{dev,eval}.track_2.trial.tsv)")
    parser.add_argument("--cm_protocol", help="with --sasv_scores: attack labels from this CM protocol")
    parser.add_argument("--metrics_csv", help="main.py's metrics.csv: adds training.png")
    parser.add_argument("--out", default="report", help="output folder (default: report)")
    args = parser.parse_args()
    pairs = {"--sasv/--sasv_keys": (args.sasv, args.sasv_keys), "--cm/--cm_keys": (args.cm, args.cm_keys),
             "--sasv_scores/--trials": (args.sasv_scores, args.trials)}
    given = [name for name, pair in pairs.items() if any(pair)]
    if len(given) != 1:
        parser.error(f"give exactly one of {', '.join(pairs)} (got {', '.join(given) or 'none'})")
    if not all(pairs[given[0]]):
        parser.error(f"{given[0]} go together")
    if args.asv_org and not args.sasv:
        parser.error("--asv_org goes with --sasv/--sasv_keys")
    if args.cm_protocol and not args.sasv_scores:
        parser.error("--cm_protocol goes with --sasv_scores/--trials")
    if (args.subset or args.asv_keys or args.asv_scores) and not args.cm:
        parser.error("--subset, --asv_keys and --asv_scores go with --cm/--cm_keys")
    return args


def _cm_evaluation_set(keys: str) -> bool:
    """`keys` is the official keys file of a CM-only evaluation set (2021 LA / DF, In-the-Wild)."""
    from data.corpora import corpus_for_keys
    try:
        return not corpus_for_keys(keys).has_sasv
    except ProtocolError:
        return False


def main() -> None:
    args = parse_args()
    check_output_place(args.out, "--out")  # before the reading and the metrics, not after them
    extend, first = None, None
    if args.sasv:
        trials = read_track2(args.sasv, args.sasv_keys, args.asv_org)
    elif args.cm and _cm_evaluation_set(args.cm_keys):
        from scoring.cm_conditions import read_cm_benchmark, report_extension
        trials, tables = read_cm_benchmark(args.cm, args.cm_keys, args.subset, args.asv_keys, args.asv_scores)
        extend, first = report_extension(tables), "eer"
    elif args.cm:
        if args.subset or args.asv_keys or args.asv_scores:
            raise ProtocolError(f"{args.cm_keys}: --subset / --asv_keys / --asv_scores apply to the keys of a CM "
                                f"evaluation set (2021 LA / DF, In-the-Wild), not to ASVspoof 5 Track 1 keys")
        trials = read_track1(args.cm, args.cm_keys)
    else:
        trials = read_sasv_score_file(args.sasv_scores, args.trials, args.cm_protocol)
    report = write_report(args.out, trials, metrics_csv=args.metrics_csv, plots_beside=True, extend=extend,
                          first=first)
    print(f"{pooled_text(report)} -> {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    run_cli(main)
