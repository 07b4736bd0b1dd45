"""SASV scores of the dev and eval trials with a joint checkpoint, and SASV-EER, SV-EER, SPF-EER, min a-DCF.

Writes to --comment (default Exp-SASV):
  score_SASV_{part}.txt   "SPK UTT KEY score" in trial order (higher = target bona fide)
  metrics_{part}.json     sasv_eer, sv_eer, spf_eer, min_a_dcf (fractions), n_trials, n_skipped_trials,
                          skipped_audio (on_bad_audio: skip; skipped trials have the score nan)
  report_{part}/          the evaluation report (scoring/report.py, docs/evaluation.md): report.json/.md/.csv,
                          plots, and the ASVspoof 5 Track 2 files track2_scores.tsv, track2_keys.tsv
Each test utterance and each speaker's enrollment goes through the networks once.
"""
from __future__ import annotations

import argparse
import sys

from data import corpus
from models.build import load_system
from runtime import files
from runtime.cli import add_config_args, add_model_args, add_output_args, config_from_args, run_cli, weight_args
from runtime.device import resolve_device
from scoring.extraction import Extraction
from scoring.inputs import scoring_inputs
from scoring.report import primary_metric, write_sasv_report
from scoring.sasv import SASVScorer, sasv_metrics, sasv_text, skipped_summary, write_sasv_scores


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=False)
    add_model_args(parser, asv=True, cm=True)  # with a _fixed model's checkpoint (back-end only)
    add_output_args(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = config_from_args(args)
    device = resolve_device(config["device"])
    model, loss, _ = load_system(config, device, weight_args(args), need=("asv", "cm", "backend"))
    scorer = SASVScorer(model, loss, Extraction.from_config(config, device))
    out = files.output_folder(args.comment, "--comment")
    for part in args.partitions:
        inputs = scoring_inputs(config, part)
        scored = scorer.score_trials(inputs)
        result = sasv_metrics(scored.scores, [t.key for t in inputs.trials], scored.skipped)
        write_sasv_scores(out / f"score_SASV_{part}.txt", inputs, scored.scores)
        if scored.n_skipped:  # on_bad_audio: skip; the skipped trials keep their line with score nan
            print(skipped_summary(scored, part), file=sys.stderr)
        result.update(n_trials=len(inputs.trials), n_skipped_trials=scored.n_skipped,
                      skipped_audio=dict(sorted(scored.bad_audio.items())))
        report = write_sasv_report(out / f"report_{part}", str(out / f"score_SASV_{part}.txt"), inputs.trials,
                                   scored.scores, scored.skipped, cm=scored.cm, asv=scored.asv, codecs=inputs.codecs,
                                   first=corpus.primary_metric(config))
        result.update(primary_metric(report))
        files.write_json(out / f"metrics_{part}.json", result)
        print(f"{part}: {sasv_text(result)} ({len(inputs.trials) - scored.n_skipped} trials) -> "
              f"{out / f'score_SASV_{part}.txt'}")


if __name__ == "__main__":
    run_cli(main)
