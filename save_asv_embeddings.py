"""Export ASV and CM embeddings of every CM-protocol utterance, and ASV speaker models.

Writes to --comment (default Exp-SASV):
  asv_embd_{trn,dev,eval}.pk, cm_embd_{trn,dev,eval}.pk   utterance id -> float32 vector
  spk_model_{dev,eval}.pk                                  speaker -> mean ASV embedding of its enrollment utterances
Every list is read and, with on_bad_audio: error, every audio file checked before any extraction; the
files of every partition are moved into place together once all of them are computed and written (a
failure, a full disk included, leaves the earlier outputs as they were). An earlier run's file of a written
partition that this run does not write (the embeddings of a network not loaded) is deleted then.
With on_bad_audio: skip, unreadable utterances are left out (and listed on stderr), and so is the model of
a speaker with an unreadable enrollment utterance (as SASV scoring skips that speaker's trials).
"""
from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data.corpora import corpus_of
from models.build import load_system
from runtime.cli import add_config_args, add_model_args, add_output_args, config_from_args, run_cli, weight_args
from runtime.config import require_database
from runtime.device import resolve_device
from runtime.files import check_output_place, staged_outputs
from scoring.extraction import Extraction, extract
from scoring.inputs import check_enrollment_audio, listed_audio
from scoring.pipeline import bad_audio_summary
from scoring.verification import speaker_model

PARTITIONS = ("trn", "dev", "eval")  # the CM lists (the corpus adapter's cm_list) of the config's dataset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=False)
    add_model_args(parser, asv=True, cm=True)
    add_output_args(parser, list(PARTITIONS))
    return parser.parse_args()


def speaker_models(asv_embedding: Callable, enrollment: dict[str, list[Path]], samples: int, options: Extraction,
                   part: str, bad_audio: dict[str, str]) -> dict[str, np.ndarray]:
    """speaker -> mean ASV embedding of its enrollment utterances, each embedded once. A speaker with an
    unreadable enrollment utterance (on_bad_audio: skip) gets no model, so that save_asv_score.py skips its
    trials, as SASV scoring does."""
    paths = [path for utterances in enrollment.values() for path in utterances]
    matrix = extract(paths, samples, {"asv": asv_embedding}, options, desc=f"{part} enrollment",
                     bad_audio=bad_audio)["asv"].numpy()
    models, row = {}, 0
    for speaker, utterances in enrollment.items():
        rows = range(row, row + len(utterances))
        row += len(utterances)
        if not any(str(paths[i]) in bad_audio for i in rows):
            models[speaker] = speaker_model([matrix[i] for i in rows])
    return models


def output_files(out: Path, partitions: list[str]) -> list[Path]:
    """Every file this run may write (which networks are loaded is known only later: both kinds)."""
    models = {part: [f"spk_model_{part}.pk"] if part != "trn" else [] for part in partitions}
    return [out / name for part in partitions for name in (f"asv_embd_{part}.pk", f"cm_embd_{part}.pk", *models[part])]


def main() -> None:
    args = parse_args()
    config = config_from_args(args)
    out = Path(args.comment)
    check_output_place(out, "--comment")  # before any model is loaded
    for path in output_files(out, args.partitions):
        check_output_place(path, "--comment", folder=False)
    device = resolve_device(config["device"])
    model, _, loaded = load_system(config, device, weight_args(args), optional=("asv", "cm"))
    require_database(config)
    networks = {}
    if "asv" in loaded:
        networks["asv"] = model.asv_embedding
    if "cm" in loaded:
        networks["cm"] = lambda wave: model.cm_embedding(wave)[0]
    options = Extraction.from_config(config, device)
    ext = config["audio_ext"]
    plans = {}
    corpus = corpus_of(config)
    for part in args.partitions:  # every list read and every file checked before any extraction
        utterances = [entry.utterance for entry in corpus.cm_entries(part)]
        paths = listed_audio(config, part, utterances, corpus.cm_list(part))
        speakers = corpus.enrollment_utterances(part) if part != "trn" and "asv" in loaded else {}
        folder = corpus.audio_dir(part)
        enrollment = {speaker: [folder / f"{u}.{ext}" for u in utts] for speaker, utts in speakers.items()}
        if enrollment and config["on_bad_audio"] == "error":
            check_enrollment_audio(enrollment, corpus.enrollment_list(part))
        plans[part] = (utterances, paths, enrollment)
    written = []
    # Each partition's files are staged as soon as they are computed; all of them are moved in together at
    # the end, so a failure in a later partition (or a full disk) leaves the earlier outputs as they were.
    with staged_outputs() as outputs:
        for part, (utterances, paths, enrollment) in plans.items():
            bad_audio: dict[str, str] = {}  # on_bad_audio: skip; those utterances are left out of the pickles
            embeddings = extract(paths, config["test_samples"], networks, options, desc=f"{part} utterances",
                                 bad_audio=bad_audio)
            good = [i for i, path in enumerate(paths) if str(path) not in bad_audio]
            tables = {f"{name}_embd_{part}.pk": {utterances[i]: matrix[i].numpy() for i in good}
                      for name, matrix in embeddings.items()}
            if enrollment:
                tables[f"spk_model_{part}.pk"] = speaker_models(model.asv_embedding, enrollment,
                                                                config["test_samples"], options, part, bad_audio)
            for name, table in tables.items():
                outputs.write_bytes(out / name, pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL))
                written.append(name)
            for path in output_files(out, [part]):  # an earlier run's file of a network not loaded this time
                outputs.remove(path)
            if bad_audio:
                n_files = len(paths) + sum(len(files) for files in enrollment.values())
                print(bad_audio_summary(part, len(bad_audio), n_files, "audio files", bad_audio,
                                        consequence="left out of the embeddings and speaker models"), file=sys.stderr)
    print(f"wrote {len(written)} files to {out}: {', '.join(written)}")


if __name__ == "__main__":
    run_cli(main)
