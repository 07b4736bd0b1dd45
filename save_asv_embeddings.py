"""Export ASV and CM embeddings of every CM-protocol utterance, and ASV speaker models.

Writes to --comment (default Exp-SASV):
  asv_embd_{trn,dev,eval}.pk, cm_embd_{trn,dev,eval}.pk   utterance id -> float32 vector
  spk_model_{dev,eval}.pk                                  speaker -> mean ASV embedding of its enrollment utterances
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from data.datasets import partition_audio_dir
from data.protocols import read_cm_protocol, read_enrollment_utterances
from engine import io as result_io
from engine.builder import resolve_device
from engine.cli import add_config_args, add_model_args, config_from_args, model_from_args, run_cli
from engine.config import require_database
from engine.evaluation import extract

PARTITIONS = {"trn": "cm_trn_list", "dev": "cm_dev_list", "eval": "cm_eval_list"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=False)
    add_model_args(parser, asv=True, cm=True)
    parser.add_argument("--comment", default="Exp-SASV", help="output folder")
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = config_from_args(args)
    model, _, loaded = model_from_args(config, args, need=("asv", "cm"))
    database = require_database(config)
    device = resolve_device(config["device"])
    out = Path(args.comment)
    networks = {}
    if "asv" in loaded:
        networks["asv"] = model.asv_embedding
    if "cm" in loaded:
        networks["cm"] = lambda wave: model.cm_embedding(wave)[0]
    options = dict(device=device, batch_size=config["eval_batch_size"], num_workers=config["loader"]["n_workers"],
                   sample_rate=config["sample_rate"], resample=config["resample"])
    written = []
    for part in args.partitions:
        entries = read_cm_protocol(config["dirs"][PARTITIONS[part]])
        folder = partition_audio_dir(database, part)
        utterances = [entry.utterance for entry in entries]
        embeddings = extract([folder / f"{u}.{config['audio_ext']}" for u in utterances], config["test_samples"], networks,
                             desc=f"{part} utterances", **options)
        for name, matrix in embeddings.items():
            path = out / f"{name}_embd_{part}.pk"
            result_io.write_pickle(path, dict(zip(utterances, matrix.numpy())))
            written.append(path.name)
        if part == "trn" or "asv" not in loaded:
            continue
        speakers = read_enrollment_utterances(config["dirs"][f"asv_{part}_enrollment_lists"])
        pairs = [(speaker, utt) for speaker, utts in speakers.items() for utt in utts]
        enrollment = extract([folder / f"{utt}.{config['audio_ext']}" for _, utt in pairs], config["test_samples"],
                             {"asv": model.asv_embedding}, desc=f"{part} enrollment", **options)["asv"].numpy()
        models = {speaker: np.mean([enrollment[i] for i, (s, _) in enumerate(pairs) if s == speaker], axis=0)
                  for speaker in speakers}
        path = out / f"spk_model_{part}.pk"
        result_io.write_pickle(path, models)
        written.append(path.name)
    print(f"wrote {len(written)} files to {out}: {', '.join(written)}")


if __name__ == "__main__":
    run_cli(main)
