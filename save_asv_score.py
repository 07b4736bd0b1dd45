"""Cosine ASV scores from save_asv_embeddings.py output, in SASV trial order, and the SV-EER.

Reads asv_embd_{part}.pk and spk_model_{part}.pk from --comment and writes there:
  score_ASV_{part}.txt      "UTT score" per line, in the order of asv.{part}.gi.trl.txt
  metrics_ASV_{part}.json   sv_eer (and sasv_eer, spf_eer of the ASV score alone), fractions
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

from data.protocols import read_sasv_trials
from engine import io as result_io
from engine.cli import add_config_args, config_from_args, run_cli
from engine.config import ConfigError
from metrics.eer import sasv_eers


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=False)
    parser.add_argument("--comment", default="Exp-SASV", help="folder with the embeddings; scores go there too")
    parser.add_argument("--partitions", nargs="+", default=["dev", "eval"], choices=["dev", "eval"])
    return parser.parse_args()


def _load(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path} not found; run save_asv_embeddings.py --comment {path.parent} first")
    with open(path, "rb") as handle:
        return pickle.load(handle)


def cosine_scores(speaker_models: dict, embeddings: dict, trials, trial_path) -> np.ndarray:
    for index, trial in enumerate(trials, start=1):
        if trial.speaker not in speaker_models:
            raise ConfigError(f"{trial_path}:{index}: no speaker model for {trial.speaker}")
        if trial.utterance not in embeddings:
            raise ConfigError(f"{trial_path}:{index}: no ASV embedding for {trial.utterance}")
    enrolled = np.stack([speaker_models[t.speaker] for t in trials]).astype(np.float64)
    tests = np.stack([embeddings[t.utterance] for t in trials]).astype(np.float64)
    return np.einsum("ij,ij->i", enrolled, tests) / (np.linalg.norm(enrolled, axis=1) * np.linalg.norm(tests, axis=1))


def main() -> None:
    args = parse_args()
    config = config_from_args(args)
    out = Path(args.comment)
    for part in args.partitions:
        trial_path = config["dirs"][f"sasv_{part}_trial"]
        trials = read_sasv_trials(trial_path)
        scores = cosine_scores(_load(out / f"spk_model_{part}.pk"), _load(out / f"asv_embd_{part}.pk"), trials, trial_path)
        result_io.write_scores(out / f"score_ASV_{part}.txt", ([t.utterance for t in trials],), scores)
        result = sasv_eers(scores, [t.key for t in trials])
        result_io.write_json(out / f"metrics_ASV_{part}.json", result)
        print(f"{part}: SV-EER {100 * result['sv_eer']:.2f}% over {len(trials)} trials -> {out / f'score_ASV_{part}.txt'}")


if __name__ == "__main__":
    run_cli(main)
