"""Cosine ASV scores from save_asv_embeddings.py output, in SASV trial order, and the SV-EER.

Reads asv_embd_{part}.pk and spk_model_{part}.pk from --comment and writes there (every partition's files
moved in together at the end: a failure leaves the earlier outputs as they were):
  score_ASV_{part}.txt      "UTT score" per line, in the order of the config's trial list
  metrics_ASV_{part}.json   sv_eer (and sasv_eer, spf_eer of the ASV score alone), fractions; n_trials,
                            n_skipped_trials (on_bad_audio: skip: trials without embedding or speaker model, score nan)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from data.corpora import corpus_of
from data.embeddings import read_embeddings
from metrics.eer import sasv_eers
from runtime.cli import add_config_args, add_output_args, config_from_args, run_cli
from runtime.files import StagedOutputs, check_output_place, json_text, staged_outputs
from scoring.pipeline import Writer, asv_scored, evaluate_asv
from scoring.score_files import scores_text
from scoring.scored_trials import ScoredTrials
from scoring.verification import cosine_scores


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=False)
    add_output_args(parser, help="folder with the embeddings; scores go there too")
    return parser.parse_args()


def script_writer(outputs: StagedOutputs, score_file: Path, trials: list) -> Writer:
    """This script's score file of one partition (`UTT score`, trial order; nan for a skipped trial)."""
    return Writer(scores=lambda scored: outputs.write_text(score_file, scores_text(
        ([t.utterance for t in trials],), scored.asv)))


def sv_metrics(scored: ScoredTrials) -> dict:
    """SV-EER (and the SASV-EER, SPF-EER of the ASV score alone) of the trials not skipped."""
    kept = scored.kept()
    return sasv_eers(kept.asv, kept.asv_keys.tolist())


def main() -> None:
    args = parse_args()
    config = config_from_args(args)
    out = Path(args.comment)  # the embeddings are read from here
    check_output_place(out, "--comment")  # before any reading
    for part in args.partitions:
        for name in (f"score_ASV_{part}.txt", f"metrics_ASV_{part}.json"):
            check_output_place(out / name, "--comment", folder=False)
    summaries = []
    # Every partition's files are staged, then moved in together: a failure leaves the earlier outputs as they were.
    corpus = corpus_of(config)
    with staged_outputs() as outputs:
        for part in args.partitions:
            trial_path = corpus.trial_list(part)
            trials = corpus.sasv_trials(part)
            scores, skipped = cosine_scores(read_embeddings(out / f"spk_model_{part}.pk"),
                                            read_embeddings(out / f"asv_embd_{part}.pk"), trials, trial_path,
                                            skip_missing=config["on_bad_audio"] == "skip")
            result = evaluate_asv(asv_scored(scores, [t.key for t in trials], skipped, None), part,
                                  script_writer(outputs, out / f"score_ASV_{part}.txt", trials), sv_metrics,
                                  cause="save_asv_embeddings.py left their audio out")
            outputs.write_text(out / f"metrics_ASV_{part}.json", json_text(result))
            scored_trials = result["n_trials"] - result["n_skipped_trials"]
            summaries.append(f"{part}: SV-EER {100 * result['sv_eer']:.2f}% over {scored_trials} trials -> "
                             f"{out / f'score_ASV_{part}.txt'}")
    for summary in summaries:
        print(summary)


if __name__ == "__main__":
    run_cli(main)
