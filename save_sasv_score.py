"""SASV scores of the dev and eval trials with a joint checkpoint, and SASV-EER, SV-EER, SPF-EER, min a-DCF.

Writes to --comment (default Exp-SASV):
  score_SASV_{part}.txt   "SPK UTT KEY score" in trial order (higher = target bona fide)
  metrics_{part}.json     sasv_eer, sv_eer, spf_eer, min_a_dcf (fractions; ASVspoof 5: also a_dcf), n_trials,
                          n_skipped_trials, skipped_audio (on_bad_audio: skip; skipped trials have the score nan)
  report_{part}/          the evaluation report (scoring/report.py, docs/evaluation.md): report.json/.md/.csv,
                          plots, and the ASVspoof 5 Track 2 files track2_scores.tsv, track2_keys.tsv
Each test utterance and each speaker's enrollment goes through the networks once; the evaluation is
scoring.pipeline's, as main.py's. Every output place is checked
before the model is loaded, every partition's inputs before any scoring; the files of all partitions are moved
into place together at the end, so a failure (a full disk included) leaves the earlier outputs as they were.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from data.corpora import corpus_of
from models.build import load_system
from runtime.cli import add_config_args, add_model_args, add_output_args, config_from_args, run_cli, weight_args
from runtime.config import Config
from runtime.device import resolve_device
from runtime.files import StagedOutputs, check_output_place, json_text, staged_outputs
from scoring.extraction import Extraction
from scoring.inputs import scoring_inputs
from scoring.pipeline import Writer, evaluate_sasv
from scoring.report import REPORT_FILES, REPORT_PLOTS, TRACK2_FILES, write_sasv_report
from scoring.sasv import SASVScorer, sasv_text
from scoring.score_files import scores_text
from scoring.scored_trials import ScoredTrials


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=False)
    add_model_args(parser, asv=True, cm=True)  # with a _fixed model's checkpoint (back-end only)
    add_output_args(parser)
    return parser.parse_args()

def check_output_places(out: Path, partitions: list[str]) -> None:
    """Before any model is loaded: --comment can hold every file this run writes (exit status 2 otherwise)."""
    check_output_place(out, "--comment")
    for part in partitions:
        check_output_place(out / f"report_{part}", "--comment")
        for path in (out / f"score_SASV_{part}.txt", out / f"metrics_{part}.json",
                     *(out / f"report_{part}" / name for name in (*REPORT_FILES, *REPORT_PLOTS, *TRACK2_FILES))):
            check_output_place(path, "--comment", folder=False)


def script_writer(config: Config, outputs: StagedOutputs, score_file: Path, report: Path) -> Writer:
    """This script's files of one partition: the score file (`SPK UTT KEY score`; a skipped trial keeps its
    line with the score nan) and the report folder, staged into `outputs`."""
    def scores(scored: ScoredTrials) -> None:
        outputs.write_text(score_file, scores_text((scored.speaker, scored.utterance, scored.asv_keys), scored.sasv))

    def write_report(scored: ScoredTrials) -> dict:
        # The report deletes the report files of an earlier run that it does not write (a plot).
        return write_sasv_report(report, replace(scored, source=str(score_file)),
                                 first=corpus_of(config).headline["sasv"], outputs=outputs,
                                 plots=config["report_plots"])

    return Writer(scores=scores, report=write_report)


def main() -> None:
    args = parse_args()
    config = config_from_args(args)
    out = Path(args.comment)
    check_output_places(out, args.partitions)
    device = resolve_device(config["device"])
    model, loss, _ = load_system(config, device, weight_args(args), need=("asv", "cm", "backend"))
    scorer = SASVScorer(model, loss, Extraction.from_config(config, device))
    inputs = {part: scoring_inputs(config, part) for part in args.partitions}  # every partition checked first
    summaries = []
    # Every partition's files, reports included, are staged, then moved in together: a failure in a later
    # partition (or a full disk) leaves the earlier outputs as they were and writes nothing of this run.
    with staged_outputs() as outputs:
        for part in args.partitions:
            score_file = out / f"score_SASV_{part}.txt"
            scored = scorer.score_trials(inputs[part])
            result = evaluate_sasv(scored, part, script_writer(config, outputs, score_file, out / f"report_{part}"))
            outputs.write_text(out / f"metrics_{part}.json", json_text(result))
            summaries.append(f"{part}: {sasv_text(result)} ({len(scored) - scored.n_skipped} trials) -> {score_file}")
    for summary in summaries:
        print(summary)


if __name__ == "__main__":
    run_cli(main)
