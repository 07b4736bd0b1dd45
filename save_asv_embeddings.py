"""Export ASV and CM embeddings of every CM-protocol utterance, and ASV speaker models.

Writes to --comment (default Exp-SASV):
  asv_embd_{trn,dev,eval}.pk, cm_embd_{trn,dev,eval}.pk   utterance id -> float32 vector
  spk_model_{dev,eval}.pk                                  speaker -> mean ASV embedding of its enrollment utterances
With on_bad_audio: skip, unreadable utterances are left out (and listed on stderr).
"""
from __future__ import annotations

import argparse
import sys

from data import corpus
from models.build import load_system
from runtime import files
from runtime.cli import add_config_args, add_model_args, add_output_args, config_from_args, run_cli, weight_args
from runtime.config import require_database
from runtime.device import resolve_device
from scoring.extraction import Extraction, extract
from scoring.verification import speaker_model

PARTITIONS = ("trn", "dev", "eval")  # the CM lists (data.corpus.cm_list) of the config's dataset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=False)
    add_model_args(parser, asv=True, cm=True)
    add_output_args(parser, list(PARTITIONS))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = config_from_args(args)
    device = resolve_device(config["device"])
    model, _, loaded = load_system(config, device, weight_args(args), optional=("asv", "cm"))
    require_database(config)
    out = files.output_folder(args.comment, "--comment")
    networks = {}
    if "asv" in loaded:
        networks["asv"] = model.asv_embedding
    if "cm" in loaded:
        networks["cm"] = lambda wave: model.cm_embedding(wave)[0]
    options = Extraction.from_config(config, device)
    written = []
    for part in args.partitions:
        entries = corpus.cm_entries(config, part)
        folder = corpus.audio_dir(config, part)
        utterances = [entry.utterance for entry in entries]
        bad_audio: dict[str, str] = {}  # on_bad_audio: skip; those utterances are left out of the pickles
        paths = [folder / f"{u}.{config['audio_ext']}" for u in utterances]
        embeddings = extract(paths, config["test_samples"], networks, options, desc=f"{part} utterances",
                             bad_audio=bad_audio)
        good = [i for i, path in enumerate(paths) if str(path) not in bad_audio]
        for name, matrix in embeddings.items():
            path = out / f"{name}_embd_{part}.pk"
            files.write_pickle(path, {utterances[i]: matrix[i].numpy() for i in good})
            written.append(path.name)
        if part != "trn" and "asv" in loaded:
            speakers = corpus.enrollment_utterances(config, part)
            pairs = [(speaker, utt) for speaker, utts in speakers.items() for utt in utts]
            enrollment_paths = [folder / f"{utt}.{config['audio_ext']}" for _, utt in pairs]
            enrollment = extract(enrollment_paths, config["test_samples"], {"asv": model.asv_embedding}, options,
                                 desc=f"{part} enrollment", bad_audio=bad_audio)["asv"].numpy()
            usable = [str(path) not in bad_audio for path in enrollment_paths]
            models = {}
            for speaker in speakers:
                rows = [i for i, (owner, _) in enumerate(pairs) if owner == speaker and usable[i]]
                if rows:  # a speaker without any readable enrollment gets no model (its trials are then skipped)
                    models[speaker] = speaker_model([enrollment[i] for i in rows])
            path = out / f"spk_model_{part}.pk"
            files.write_pickle(path, models)
            written.append(path.name)
        if bad_audio:
            shown = "; ".join(f"{p}: {r}" for p, r in sorted(bad_audio.items())[:3])
            print(f"warning: {part}: {len(bad_audio)} audio file(s) skipped (on_bad_audio: skip), left out of the "
                  f"embeddings and speaker models: {shown}", file=sys.stderr)
    print(f"wrote {len(written)} files to {out}: {', '.join(written)}")


if __name__ == "__main__":
    run_cli(main)
