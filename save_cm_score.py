"""CM scores of every CM-protocol utterance, the CM EER and the min t-DCF.

Writes to --comment (default Exp-SASV), for dev and eval (every partition's files moved in together at the
end: a failure leaves the earlier outputs as they were):
  score_CM_{part}.txt             "UTT score": softmax probability of bona fide
  score_CM_{part}_no_softmax.txt  "UTT score": bona fide logit (used for the metrics, as aasist does)
  metrics_CM_{part}.json          cm_eer, cm_threshold and min_tdcf (fractions), n_utterances, n_skipped_utterances
                                  and skipped_audio (on_bad_audio: skip gives a bad file the score nan)
The min t-DCF (ASVspoof 2019 legacy costs) needs ASV scores: score_ASV_{part}.txt in the
same folder (from save_asv_score.py); without it the t-DCF is skipped and the summary says so.

A CM evaluation set (dataset asvspoof2021_la, asvspoof2021_df, in_the_wild; --partitions eval) is read from
its release layout under dirs.database: every trial of its keys file is scored (the 2021 keys' subsets
progress, eval and hidden_track alike, as the organisers' package takes a score for each); the metrics of
metrics_CM_eval.json are of the subset `eval` (`metrics_subset`, `n_subset_utterances`), and
`evaluate.py --cm score_CM_eval_no_softmax.txt --cm_keys KEYS` gives the full report (docs/cm_benchmarks.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from data.corpora import corpus_of
from models.build import load_system
from runtime.cli import add_config_args, add_model_args, add_output_args, config_from_args, run_cli, weight_args
from runtime.config import require_database
from runtime.device import resolve_device
from runtime.files import StagedOutputs, check_output_place, json_text, staged_outputs
from scoring.extraction import Extraction
from scoring.inputs import listed_audio
from scoring.pipeline import Writer, evaluate_cm, score_cm
from scoring.score_files import read_asv_score_file, scores_text
from scoring.scored_trials import ScoredTrials


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=False)
    add_model_args(parser, asv=False, cm=True)
    add_output_args(parser)
    return parser.parse_args()


def output_files(out: Path, partitions: list[str]) -> list[Path]:
    return [out / name for part in partitions
            for name in (f"score_CM_{part}.txt", f"score_CM_{part}_no_softmax.txt", f"metrics_CM_{part}.json")]


def script_writer(outputs: StagedOutputs, out: Path, part: str, logits: torch.Tensor) -> Writer:
    """This script's score files of one partition (`UTT score`, CM-list order; nan for a skipped utterance):
    the softmax probability of bona fide and the bona fide logit, staged into `outputs`."""
    def scores(scored: ScoredTrials) -> None:
        names = (scored.utterance,)
        outputs.write_text(out / f"score_CM_{part}.txt", scores_text(names, torch.softmax(logits, dim=1)[:, 1].numpy()))
        outputs.write_text(out / f"score_CM_{part}_no_softmax.txt", scores_text(names, scored.cm))

    return Writer(scores=scores)


def main() -> None:
    args = parse_args()
    config = config_from_args(args)
    out = Path(args.comment)
    check_output_place(out, "--comment")  # before any model is loaded
    for path in output_files(out, args.partitions):
        check_output_place(path, "--comment", folder=False)
    device = resolve_device(config["device"])
    model, _, _ = load_system(config, device, weight_args(args), need=("cm",))
    require_database(config)
    corpus = corpus_of(config)
    options = Extraction.from_config(config, device)
    lists = {part: corpus.cm_entries(part) for part in args.partitions}
    # every list read and every file checked before any scoring
    audio = {part: listed_audio(config, part, [e.utterance for e in entries], corpus.cm_list(part))
             for part, entries in lists.items()}
    summaries = []
    # Every partition's files are staged, then moved in together: a failure leaves the earlier outputs as they were.
    with staged_outputs() as outputs:
        for part, entries in lists.items():
            scored, logits = score_cm(lambda wave: model.cm_embedding(wave)[1], entries, audio[part],
                                      config["test_samples"], options, part, f"{part} CM")
            asv_path = out / f"score_ASV_{part}.txt"
            # The t-DCF is ASVspoof 2019's; ASVspoof 5 ranks countermeasures by min DCF / a-DCF instead, and a
            # CM evaluation set (no SASV trials) has its own ASV keys, which evaluate.py --cm_keys reads.
            asv2019 = corpus.has_tdcf
            asv = read_asv_score_file(asv_path, corpus.trial_list(part)) \
                if asv2019 and asv_path.is_file() else None
            selected = corpus.headline_selection(entries)
            scored_result = evaluate_cm(scored, part, script_writer(outputs, out, part, logits), asv, selected)
            result = {"cm_eer": scored_result["eer"], "cm_threshold": scored_result["threshold"],
                      "min_tdcf": scored_result["min_tdcf"],
                      **{name: scored_result[name] for name in ("n_utterances", "n_skipped_utterances",
                                                                "skipped_audio")}}
            if selected is not None:
                result["metrics_subset"] = corpus.headline_subset
                result["n_subset_utterances"] = scored_result["n_selected_utterances"]
            if not corpus.has_sasv:
                result["min_tdcf_note"] = (f"{corpus.title} is a CM evaluation set: evaluate.py --cm "
                                           f"{out / f'score_CM_{part}_no_softmax.txt'} --cm_keys "
                                           f"{corpus.cm_list(part)} gives its report (min t-DCF where its keys "
                                           f"release has ASV scores)")
            elif not asv2019:
                result["min_tdcf_note"] = "the t-DCF is defined for ASVspoof 2019 LA only"
            elif asv is None:
                result["min_tdcf_note"] = f"no {asv_path}; run save_asv_score.py first"
            elif "min_tdcf_note" in scored_result:
                result["min_tdcf_note"] = scored_result["min_tdcf_note"]
            outputs.write_text(out / f"metrics_CM_{part}.json", json_text(result))
            tdcf = f"min t-DCF {result['min_tdcf']:.4f}" if result["min_tdcf"] is not None else \
                f"min t-DCF skipped: {result['min_tdcf_note']}"
            subset = "" if selected is None else \
                f" (subset {corpus.headline_subset}: {result['n_subset_utterances']} of {result['n_utterances']})"
            summaries.append(f"{part}{subset}: CM EER {100 * result['cm_eer']:.2f}%, {tdcf} -> "
                             f"{out / f'score_CM_{part}.txt'}")
    for summary in summaries:
        print(summary)


if __name__ == "__main__":
    run_cli(main)
