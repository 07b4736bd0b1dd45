"""CM scores of every CM-protocol utterance, the CM EER and the min t-DCF.

Writes to --comment (default Exp-SASV), for dev and eval:
  score_CM_{part}.txt             "UTT score": softmax probability of bona fide
  score_CM_{part}_no_softmax.txt  "UTT score": bona fide logit (used for the metrics, as aasist does)
  metrics_CM_{part}.json          cm_eer, cm_threshold and min_tdcf (fractions), n_utterances, n_skipped_utterances
                                  and skipped_audio (on_bad_audio: skip gives a bad file the score nan)
The min t-DCF (ASVspoof 2019 legacy costs) needs ASV scores: score_ASV_{part}.txt in the
same folder (from save_asv_score.py); without it the t-DCF is skipped and the summary says so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from data.datasets import partition_audio_dir
from data.protocols import ProtocolError, read_cm_protocol, read_sasv_trials
from runtime import files
from scoring.score_files import write_scores
from runtime.device import resolve_device
from runtime.cli import add_config_args, add_model_args, config_from_args, model_from_args, run_cli
from runtime.config import require_database
from scoring.extraction import extract
from metrics import MetricError
from metrics.eer import compute_eer
from metrics.tdcf import min_tdcf


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=False)
    add_model_args(parser, asv=False, cm=True)
    parser.add_argument("--comment", default="Exp-SASV", help="output folder")
    parser.add_argument("--partitions", nargs="+", default=["dev", "eval"], choices=["dev", "eval"])
    return parser.parse_args()


def read_asv_scores(path: Path, trial_path: str) -> dict[str, np.ndarray] | None:
    """target / nontarget / spoof ASV scores from a score_ASV file aligned with the trial list."""
    if not path.is_file():
        return None
    trials = read_sasv_trials(trial_path)
    lines = path.read_text().split("\n")
    rows = [line.split() for line in lines if line.strip()]
    if len(rows) != len(trials):
        raise ProtocolError(f"{path}: {len(rows)} scores for {len(trials)} trials in {trial_path}")
    by_key: dict[str, list[float]] = {"target": [], "nontarget": [], "spoof": []}
    for number, (fields, trial) in enumerate(zip(rows, trials), start=1):
        if len(fields) != 2 or fields[0] != trial.utterance:
            raise ProtocolError(f"{path}:{number}: expected '{trial.utterance} <score>', got {' '.join(fields)!r}")
        try:
            score = float(fields[1])
        except ValueError:
            raise ProtocolError(f"{path}:{number}: score {fields[1]!r} is not a number") from None
        if np.isfinite(score):  # nan: a trial save_asv_score.py skipped (on_bad_audio: skip)
            by_key[trial.key].append(score)
    return {key: np.asarray(values) for key, values in by_key.items()}


def main() -> None:
    args = parse_args()
    config = config_from_args(args)
    model, _, _ = model_from_args(config, args, need=("cm",))
    database = require_database(config)
    device = resolve_device(config["device"])
    out = Path(args.comment)
    for part in args.partitions:
        entries = read_cm_protocol(config["dirs"][f"cm_{part}_list"])
        folder = partition_audio_dir(database, part)
        bad_audio: dict[str, str] = {}
        paths = [folder / f"{e.utterance}.{config['audio_ext']}" for e in entries]
        logits = extract(paths, config["test_samples"],
                         {"logits": lambda wave: model.cm_embedding(wave)[1]}, device=device,
                         batch_size=config["eval_batch_size"], num_workers=config["loader"]["n_workers"],
                         sample_rate=config["sample_rate"], resample=config["resample"],
                         desc=f"{part} CM", on_bad_audio=config["on_bad_audio"], bad_audio=bad_audio)["logits"]
        bonafide_logit = logits[:, 1].numpy()  # nan for a skipped utterance (on_bad_audio: skip)
        bonafide_probability = torch.softmax(logits, dim=1)[:, 1].numpy()
        names = ([e.utterance for e in entries],)
        write_scores(out / f"score_CM_{part}.txt", names, bonafide_probability)
        write_scores(out / f"score_CM_{part}_no_softmax.txt", names, bonafide_logit)
        scored = np.array([str(path) not in bad_audio for path in paths])
        if bad_audio:
            shown = "; ".join(f"{path}: {reason}" for path, reason in sorted(bad_audio.items())[:3])
            print(f"warning: {part}: {len(bad_audio)} of {len(entries)} utterances skipped (on_bad_audio: skip; "
                  f"score nan, left out of the EER and t-DCF): {shown}", file=sys.stderr)
        is_bona = np.array([e.key == "bonafide" for e in entries])
        eer, threshold = compute_eer(bonafide_logit[is_bona & scored], bonafide_logit[~is_bona & scored])
        result = {"cm_eer": float(eer), "cm_threshold": float(threshold), "min_tdcf": None,
                  "n_utterances": len(entries), "n_skipped_utterances": len(bad_audio),
                  "skipped_audio": dict(sorted(bad_audio.items()))}
        asv = read_asv_scores(out / f"score_ASV_{part}.txt", config["dirs"][f"sasv_{part}_trial"])
        if asv is None:
            result["min_tdcf_note"] = f"no {out / f'score_ASV_{part}.txt'}; run save_asv_score.py first"
        else:
            try:
                result["min_tdcf"] = float(min_tdcf(asv["target"], asv["nontarget"], asv["spoof"],
                                                    bonafide_logit[is_bona & scored],
                                                    bonafide_logit[~is_bona & scored]))
            except MetricError as error:
                result["min_tdcf_note"] = str(error)
        files.write_json(out / f"metrics_CM_{part}.json", result)
        tdcf = f"min t-DCF {result['min_tdcf']:.4f}" if result["min_tdcf"] is not None else \
            f"min t-DCF skipped: {result['min_tdcf_note']}"
        print(f"{part}: CM EER {100 * eer:.2f}%, {tdcf} -> {out / f'score_CM_{part}.txt'}")


if __name__ == "__main__":
    run_cli(main)
