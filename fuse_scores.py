"""Score-level fusion baselines: SASV scores from separate ASV and CM scores, and their metrics.

Reads from --comment (default Exp-SASV), for each partition:
  score_ASV_{part}.txt            save_asv_score.py: "UTT score" (or "SPK UTT KEY score") in trial order
  score_CM_{part}_no_softmax.txt  save_cm_score.py: "UTT score", the bona fide logit, CM-protocol order
(--asv_scores / --cm_scores take other files; "{part}" in them becomes dev or eval.)
Fusions (--fusion, default all; see scoring/fusion.py):
  sum      ASV score + CM score, raw (SASV 2022 Baseline 1)
  linear   sum of the two sub-systems' log-odds, each calibrated on dev by logistic regression
  product  log(P(target) * P(bona fide)) from the same calibrations
Writes to --comment, nothing unless every input is valid and every file is written (they are moved in together):
  score_SASV_{part}_{fusion}.txt  "SPK UTT KEY score" in the order of the config's trial list
                                  (asv.{part}.gi.trl.txt, or ASVspoof5.{part}.track_2.trial.tsv)
  metrics_{part}_{fusion}.json    sasv_eer, sv_eer, spf_eer, min_a_dcf (fractions), n_trials, inputs
  fusion_calibration.json         the calibrations fitted on dev (linear, product)
A fused partition's files of fusions not run this time are deleted (they are an earlier run's), and so is
fusion_calibration.json when both partitions are fused without calibration. Linear and product fusion refuse
dev scores whose two classes a threshold separates: their calibration has no finite optimum.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.corpora import corpus_of, label_attacks
from data.protocols import ProtocolError, SASVTrial, check_every_key
from runtime.cli import add_config_args, add_output_args, config_from_args, run_cli
from runtime.config import Config
from runtime.errors import RunFailure, UserError
from runtime.files import check_output_place, json_text, staged_outputs
from scoring.fusion import CALIBRATED, FUSIONS, FusionError, fit_calibrations, fuse
from scoring.sasv import sasv_metrics, sasv_text
from scoring.score_files import read_cm_score_file, read_trial_scores, scores_text, trial_columns

PARTITIONS = ("dev", "eval")
CALIBRATION_FILE = "fusion_calibration.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=False)
    add_output_args(parser, help="folder with the ASV and CM score files; the fused scores go there too")
    parser.add_argument("--fusion", choices=[*FUSIONS, "all"], default="all")
    parser.add_argument("--asv_scores", help="ASV score file, '{part}' for the partition "
                                             "(default: <comment>/score_ASV_{part}.txt)")
    parser.add_argument("--cm_scores", help="CM score file, '{part}' for the partition "
                                            "(default: <comment>/score_CM_{part}_no_softmax.txt)")
    parser.add_argument("--prior", type=float, default=0.5,
                        help="positive-class prior of the logistic calibrations (default 0.5)")
    return parser.parse_args()


@dataclass
class PartitionScores:
    """One partition's trials with the ASV and the CM score of each trial."""
    trials: list[SASVTrial]
    asv: np.ndarray
    cm: np.ndarray  # the CM score of each trial's test utterance
    cm_utterances: np.ndarray  # every CM-scored utterance's score (for the CM calibration) ...
    cm_bonafide: np.ndarray  # ... and whether it is bona fide in the CM protocol
    asv_path: Path
    cm_path: Path
    trial_path: Path
    protocol_path: Path  # the CM protocol: the bona fide / spoof label of each CM-scored utterance


def score_paths(args: argparse.Namespace, part: str) -> tuple[Path, Path]:
    out = Path(args.comment)
    asv = args.asv_scores.replace("{part}", part) if args.asv_scores else out / f"score_ASV_{part}.txt"
    cm = args.cm_scores.replace("{part}", part) if args.cm_scores else out / f"score_CM_{part}_no_softmax.txt"
    return Path(asv), Path(cm)


def load_partition(config: Config, part: str, asv_path: Path, cm_path: Path) -> PartitionScores:
    corpus = corpus_of(config)
    trial_path, protocol_path = corpus.trial_list(part), corpus.cm_list(part)
    trials = corpus.sasv_trials(part)
    check_every_key([t.key for t in trials], trial_path)  # the metrics (and the ASV calibration) need each class
    asv = read_trial_scores(asv_path, trial_path, trials)
    entries = corpus.cm_entries(part)
    label_attacks(trials, trial_path, entries, protocol_path)  # protocols of one origin: same keys, attacks
    protocol = {entry.utterance: entry for entry in entries}
    by_utterance = read_cm_score_file(cm_path, protocol_path, entries)
    for number, trial in enumerate(trials, start=1):
        if trial.utterance not in by_utterance:
            raise ProtocolError(f"{cm_path}: no score for utterance {trial.utterance} of trial {number} of "
                                f"{trial_path}")
    utterances = sorted(by_utterance)
    return PartitionScores(trials=trials, asv=asv, cm=np.array([by_utterance[t.utterance] for t in trials]),
                           cm_utterances=np.array([by_utterance[u] for u in utterances]),
                           cm_bonafide=np.array([protocol[u].key == "bonafide" for u in utterances]),
                           asv_path=asv_path, cm_path=cm_path, trial_path=Path(trial_path),
                           protocol_path=Path(protocol_path))


def fused_files(out: Path, part: str, fusion: str) -> tuple[Path, Path]:
    return out / f"score_SASV_{part}_{fusion}.txt", out / f"metrics_{part}_{fusion}.json"


def check_output_places(out: Path, partitions: list[str], fusions: list[str], calibrate: bool) -> None:
    """Before any reading: --comment can hold every file this run writes (exit status 2 otherwise)."""
    check_output_place(out, "--comment")
    files = [out / CALIBRATION_FILE] if calibrate else []
    files += [path for part in partitions for fusion in fusions for path in fused_files(out, part, fusion)]
    for path in files:
        check_output_place(path, "--comment", folder=False)


def fused_metrics(fused: np.ndarray, keys: list[str], data: PartitionScores, fusion: str) -> dict:
    """`sasv_metrics` of the fused scores; a failure names the inputs (e.g. a calibration that overflows)."""
    try:
        return sasv_metrics(fused, keys)
    except (UserError, RunFailure) as error:
        raise FusionError(f"{data.asv_path} + {data.cm_path} ({fusion} fusion, trials of {data.trial_path}): "
                          f"{error}") from None


def main() -> None:
    args = parse_args()
    config = config_from_args(args)
    fusions = list(FUSIONS) if args.fusion == "all" else [args.fusion]
    calibrate = any(fusion in CALIBRATED for fusion in fusions)
    if not 0.0 < args.prior < 1.0:
        raise FusionError(f"--prior {args.prior}: the calibration prior must be in (0, 1)")
    out = Path(args.comment)
    check_output_places(out, args.partitions, fusions, calibrate)
    if calibrate:  # the calibration is fitted on dev, whichever partitions are fused
        missing = [str(path) for path in score_paths(args, "dev") if not path.is_file()]
        if missing:
            raise FusionError(f"{', '.join(f for f in fusions if f in CALIBRATED)} fusion is calibrated on dev "
                              f"scores, but {' and '.join(missing)} not found (run save_asv_score.py / "
                              f"save_cm_score.py with --partitions dev, or use --fusion sum)")
    parts = [part for part in ("dev", "eval") if part in args.partitions or (part == "dev" and calibrate)]
    scores = {part: load_partition(config, part, *score_paths(args, part)) for part in parts}
    calibrations = None
    if calibrate:
        dev = scores["dev"]
        calibrations = fit_calibrations(
            dev.asv, [t.key for t in dev.trials], dev.cm_utterances, dev.cm_bonafide, args.prior,
            asv_source=f"{dev.asv_path} (dev ASV scores of the trials of {dev.trial_path})",
            cm_source=f"{dev.cm_path} (dev CM scores, classes from {dev.protocol_path})")
    # Everything is computed before anything is written: bad input leaves the folder as it was.
    results = []
    for part in args.partitions:
        data = scores[part]
        keys = [t.key for t in data.trials]
        for fusion in fusions:
            fused = fuse(fusion, data.asv, data.cm, calibrations if fusion in CALIBRATED else None)
            result = fused_metrics(fused, keys, data, fusion)
            result.update(fusion=fusion, n_trials=len(keys), asv_scores=str(data.asv_path),
                          cm_scores=str(data.cm_path))
            if fusion in CALIBRATED:
                result.update(calibrated_on=[str(path) for path in score_paths(args, "dev")],
                              calibration=calibrations.as_dict())
            results.append((part, fusion, fused, result))
    # ... and every file is staged, then moved in together: a failed write (a full disk) leaves none of them.
    with staged_outputs() as outputs:
        if calibrations is not None:
            dev = scores["dev"]
            outputs.write_text(out / CALIBRATION_FILE, json_text(
                {**calibrations.as_dict(), "asv_scores": str(dev.asv_path), "cm_scores": str(dev.cm_path),
                 "output": "calibrated log-odds = scale * score + offset"}))
        for part, fusion, fused, result in results:
            score_file, metrics_file = fused_files(out, part, fusion)
            outputs.write_text(score_file, scores_text(trial_columns(scores[part].trials), fused))
            outputs.write_text(metrics_file, json_text(result))
        # A fused partition's files of the other fusions are an earlier run's (maybe of other inputs or another
        # calibration): deleted, so that the folder holds one run's fusions of it.
        for part in args.partitions:
            for fusion in FUSIONS:
                if fusion not in fusions:
                    for path in fused_files(out, part, fusion):
                        outputs.remove(path)
        if not calibrate and set(args.partitions) == set(PARTITIONS):
            outputs.remove(out / CALIBRATION_FILE)  # no calibrated fusion of any partition is left
    for part, fusion, _, result in results:
        print(f"{part} {fusion:>7}: {sasv_text(result)} ({result['n_trials']} trials) -> "
              f"{out / f'score_SASV_{part}_{fusion}.txt'}")


if __name__ == "__main__":
    run_cli(main)
